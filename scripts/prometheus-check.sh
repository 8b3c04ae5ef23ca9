#!/usr/bin/env bash
# The Prometheus side of the mesh, checked with promtool (Debian's `prometheus` package): both
# scrape configurations parse, the alert rules are valid, and every alert's unit tests pass
# (deploy/prometheus/tests: each alert shown silent on healthy series and firing on bad ones).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v promtool >/dev/null 2>&1 ||
    { echo "promtool not found: apt-get install prometheus" >&2; exit 1; }
promtool --version 2>&1 | sed -n 1p
for config in deploy/prometheus/prometheus.yml deploy/prometheus/kubernetes.yml; do
    promtool check config --syntax-only "$config"
done
promtool check rules deploy/prometheus/rules/*.yml
promtool test rules deploy/prometheus/tests/*.yml
# Every query of the Grafana dashboard parses: each becomes a recording rule of a scratch file
# (Grafana's $__rate_interval as 5m) that promtool checks.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
python3 - deploy/grafana/dashboards/mesh.json >"$scratch/dashboard.rules.yml" <<'PY'
import json, sys
dashboard = json.load(open(sys.argv[1]))
exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
print("groups:\n  - name: dashboard\n    rules:")
for i, expr in enumerate(exprs):
    print("      - record: dashboard:query_%d" % i)
    print("        expr: %s" % json.dumps(expr.replace("$__rate_interval", "5m")))
PY
promtool check rules "$scratch/dashboard.rules.yml"
echo "prometheus check: OK"
