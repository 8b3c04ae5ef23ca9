#!/usr/bin/env bash
# Checks deploy/k8s without a cluster, the way CI does:
#   1. the development overlay's secrets (scripts/k8s-dev-secrets.sh, with the real meshctl);
#   2. `kubectl kustomize` renders the overlay;
#   3. kubernetes-validate checks every object against the Kubernetes schemas (strict: an
#      unknown field is an error);
#   4. checkov scans the objects; every check it would fail is skipped by an annotation on the
#      object that says why (checkov.io/skipN), so a new finding fails this script.
# Python tools go into a virtualenv under target/ (PyPI: kubernetes-validate, checkov).
set -euo pipefail
cd "$(dirname "$0")/.."
work=target/k8s
mkdir -p "$work"
bash scripts/k8s-dev-secrets.sh >/dev/null

echo "---- kubectl kustomize deploy/k8s/overlays/dev"
kubectl kustomize deploy/k8s/overlays/dev >"$work/dev.yaml"
kinds=$(awk '/^kind:/ { print $2 }' "$work/dev.yaml" | sort | uniq -c | awk '{ printf "%s %s, ", $1, $2 }')
echo "rendered: $kinds"

venv=target/k8s-venv
if [ ! -x "$venv/bin/checkov" ] || [ ! -x "$venv/bin/kubernetes-validate" ]; then
    echo "---- installing kubernetes-validate and checkov into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate checkov
fi

echo "---- kubernetes-validate --strict"
"$venv/bin/kubernetes-validate" --strict --quiet "$work/dev.yaml"
echo "every object validates"

echo "---- checkov --framework kubernetes"
# --skip-download: checkov asks Prisma Cloud for guidelines by default; CI has no such network.
"$venv/bin/checkov" --skip-download --quiet --compact --framework kubernetes -f "$work/dev.yaml"
echo "k8s check: OK"
