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
echo "prometheus check: OK"
