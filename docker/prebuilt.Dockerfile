# The runtime stage of the top-level Dockerfile around binaries built on the host, for machines
# whose Docker engine cannot pull the `rust` image. Build context: a directory holding `bin/`
# (the four binaries), `mesh-init` and `postgres-secrets`; scripts/compose-smoke.sh prepares it.
# The host must be Debian bookworm (or another glibc ≤ 2.36) for the binaries to run here.
#
# Keep in step with the last stage of the top-level Dockerfile.
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
COPY mesh-init postgres-secrets /usr/local/bin/
COPY bin/ /usr/local/bin/
USER mesh
WORKDIR /var/lib/mesh
ENV MESH_LOG_FORMAT=json
CMD ["meshctl", "--help"]
