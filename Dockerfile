# Zero-Trust Mesh: every binary (auth-service, orders-service, inventory-service, meshctl) in one
# image. Built with the official Rust image, run on Debian slim as a non-root user. No secrets
# are baked in: certificates come from the compose `certs` volume, the client/user registry is
# mounted, and every setting is an environment variable (docs/deployment.md).
#
# Without a registry (no `rust` image to pull), docker/prebuilt.Dockerfile packs binaries built
# on the host instead: scripts/compose-smoke.sh does that.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked \
        -p auth-service -p orders-service -p inventory-service -p meshctl \
    && mkdir /out \
    && cp target/release/auth-service target/release/orders-service \
          target/release/inventory-service target/release/meshctl /out/

# Keep this stage in step with docker/prebuilt.Dockerfile.
FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 mesh \
    && useradd --system --uid 10001 --gid mesh --home-dir /var/lib/mesh \
        --shell /usr/sbin/nologin mesh \
    && mkdir -p /var/lib/mesh/certs /var/lib/mesh/data /var/lib/mesh/cli \
        /var/lib/mesh/identity /var/lib/mesh/secrets /var/lib/mesh/meshctl \
        /var/lib/mesh/init/auth /var/lib/mesh/init/orders /var/lib/mesh/init/inventory \
        /var/lib/mesh/init/orders-2 /var/lib/mesh/init/inventory-2 /var/lib/mesh/init/postgres \
        /var/lib/mesh/init/meshctl \
    && chown -R mesh:mesh /var/lib/mesh
COPY docker/mesh-init docker/postgres-secrets /usr/local/bin/
COPY --from=build /out/ /usr/local/bin/
USER mesh
WORKDIR /var/lib/mesh
ENV MESH_LOG_FORMAT=json
CMD ["meshctl", "--help"]
