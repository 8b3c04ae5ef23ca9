#!/usr/bin/env bash
# Measures what each layer of Zero-Trust Mesh costs against plain tonic, on this machine, and
# writes the markdown report to target/bench/report.md (docs/benchmarks.md quotes one):
#   - mesh-bench run: the nine configurations (closed loop + fixed rate; the eighth is plain
#     tonic behind a pair of HAProxy sidecars speaking mTLS, the ninth a hand-rolled peer; the
#     h2c ones also driven by h2load), the PlaceOrder path with per-hop latency from traces, the
#     PlaceOrder sweep on SQLite and PostgreSQL, the issuer's grants (h2load), token exchanges and
#     certificate signings per second, idle RSS per service, RSS per connection (plain, mTLS,
#     full stack);
#   - cargo bench -p mesh-bench: criterion benches (token verification per algorithm and cached,
#     policy lookup, audit append, service-token issuance over mTLS).
# Release build. Options are passed to `mesh-bench run` (see `mesh-bench run --help`).
#   scripts/bench.sh                 # the full run (about 10 minutes on 2 cores)
#   scripts/bench.sh --smoke         # only shows that everything builds and runs
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/bench
mkdir -p "$out"
# Configuration 8 puts plain tonic behind a pair of HAProxy proxies; h2load cross-checks the h2c
# configurations and drives the token endpoint (all Debian's packages).
missing=""
[ -x /usr/sbin/haproxy ] || command -v haproxy >/dev/null 2>&1 || missing="$missing haproxy"
command -v h2load >/dev/null 2>&1 || missing="$missing nghttp2-client"
# The PlaceOrder sweep's PostgreSQL leg starts a server from Debian's binaries.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing="$missing postgresql"
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        # shellcheck disable=SC2086
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    else
        echo "scripts/bench.sh: the bench needs$missing: apt-get install$missing" >&2
        exit 1
    fi
fi
cargo build --release --locked -p mesh-bench -p auth-service -p orders-service -p inventory-service
target/release/mesh-bench run --out "$out/report.md" "$@"
if [[ " $* " == *" --smoke "* ]]; then
    cargo bench --locked -p mesh-bench --bench layers -- --test
else
    cargo bench --locked -p mesh-bench --bench layers 2>&1 | tee "$out/criterion.txt" |
        grep -E '^[a-zA-Z].*|time:' || true
    {
        printf '\n| criterion bench | time (low / estimate / high) |\n|---|---|\n'
        awk '/time:/ { line = $0
                       if (line ~ /^[a-zA-Z]/) { name = line; sub(/ *time:.*/, "", name) }
                       sub(/^.*time: *\[/, "", line); sub(/\].*$/, "", line); split(line, v, " ")
                       printf "| %s | %s %s / %s %s / %s %s |\n", name, v[1], v[2], v[3], v[4], v[5], v[6]; next }
             /^[a-zA-Z]/ { name = $0 }' \
            "$out/criterion.txt"
    } >> "$out/report.md"
fi
echo "report: $out/report.md"
