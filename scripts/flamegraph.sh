#!/usr/bin/env bash
# A CPU flame graph of one mesh-bench server configuration under its closed-loop load, or of the
# whole PlaceOrder path (the dev mesh in the bench's own process), as an SVG under docs/profiles/.
#   scripts/flamegraph.sh full            # configuration 6, the full server stack
#   scripts/flamegraph.sh place-order     # PlaceOrder at 500/s: orders, auth, inventory, SQLite
# Needs perf (Debian's linux-perf; `perf record -e cpu-clock` works without hardware counters)
# and inferno (`cargo install inferno`); release build. Samples 6 s at 999 Hz with DWARF call
# graphs (Rust release builds keep no frame pointers).
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-full}
out=docs/profiles
mkdir -p "$out" target/profile
command -v perf >/dev/null 2>&1 || { echo "scripts/flamegraph.sh: needs perf (apt-get install linux-perf)" >&2; exit 1; }
command -v inferno-flamegraph >/dev/null 2>&1 || { echo "scripts/flamegraph.sh: needs inferno (cargo install inferno)" >&2; exit 1; }
cargo build --release --locked -p mesh-bench
case "$what" in
    place-order)
        target/release/mesh-bench run --steps sweep --place-sweep 500 --duration 12 --warmup 3 \
            >target/profile/run.txt 2>&1 &
        pattern='mesh-bench run --steps sweep'
        settle=8
        ;;
    *)
        target/release/mesh-bench run --steps layers --duration 10 --warmup 2 \
            >target/profile/run.txt 2>&1 &
        pattern="mesh-bench serve --config $what "
        settle=3
        ;;
esac
runner=$!
pid=""
for _ in $(seq 1 1500); do
    pid=$(pgrep -f -- "$pattern" || true)
    pid=${pid%%$'\n'*}
    [ -n "$pid" ] && break
    sleep 0.2
done
[ -n "$pid" ] || { echo "scripts/flamegraph.sh: no process matching '$pattern'" >&2; kill "$runner"; exit 1; }
sleep "$settle"
perf record -e cpu-clock -F 999 --call-graph dwarf,16384 -p "$pid" -o target/profile/perf.data -- sleep 6 \
    2>target/profile/perf.log
kill "$runner" 2>/dev/null || true
wait "$runner" 2>/dev/null || true
pkill -f 'mesh-bench serve' 2>/dev/null || true
perf script -i target/profile/perf.data 2>/dev/null | inferno-collapse-perf >target/profile/folded.txt
inferno-flamegraph --minwidth 0.5 --title "mesh-bench: $what ($(date -u +%F), $(nproc) cores)" \
    <target/profile/folded.txt >"$out/$what.svg"
echo "flame graph: $out/$what.svg ($(wc -l <target/profile/folded.txt) distinct stacks)"
