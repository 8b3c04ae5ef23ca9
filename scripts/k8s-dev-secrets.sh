#!/usr/bin/env bash
# Writes the development overlay's secrets (deploy/k8s/overlays/dev/secrets, never committed),
# keeping any that exist: the CA (its key for the auth service alone), a join token per pod the
# HPA may start (join-token-0..3 for orders and inventory), the auth service's key-encryption
# key, an audit key per service, and PostgreSQL's roles with a password file per service
# (docker/postgres-secrets) and its TLS certificate. The same route as docker/mesh-init;
# production takes these from its secret store instead.
# Usage: scripts/k8s-dev-secrets.sh   (MESHCTL=path/to/meshctl, default target/debug/meshctl)
set -euo pipefail
cd "$(dirname "$0")/.."
meshctl=${MESHCTL:-target/debug/meshctl}
out=deploy/k8s/overlays/dev/secrets
mkdir -p "$out/auth" "$out/orders" "$out/inventory" "$out/meshctl"
joins=()
for pod in 0 1 2 3; do
    joins+=(--join "orders=$out/orders/join-token-$pod" --join "inventory=$out/inventory/join-token-$pod")
done
"$meshctl" certs init --out "$out/meshctl" --ca-key "$out/auth/ca.key" "${joins[@]}" \
    --join-list "$out/auth/join-tokens" --if-missing
cp "$out/meshctl/ca.pem" "$out/ca.pem"
for secret in auth/auth.kek auth/audit.key orders/audit.key inventory/audit.key; do
    [ -s "$out/$secret" ] || "$meshctl" audit keygen --out "$out/$secret"
done
MESHCTL=$meshctl sh docker/postgres-secrets "$out/postgres" postgres "$out" auth orders inventory
# PostgreSQL's TLS certificate from the mesh CA (DNS name `postgres`; the services connect with
# sslmode=verify-full), and the first-start script that makes TLS mandatory over TCP.
[ -s "$out/postgres/postgres.key" ] ||
    "$meshctl" certs server --name postgres --ca-cert "$out/ca.pem" --ca-key "$out/auth/ca.key" \
        --out "$out/postgres"
cat >"$out/postgres/hostssl.sh" <<'HBA'
# Written by k8s-dev-secrets.sh: TCP clients must use TLS.
sed -i 's/^host\([[:space:]]\)/hostssl\1/' "$PGDATA/pg_hba.conf"
HBA
