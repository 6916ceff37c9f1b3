# syntax=docker/dockerfile:1
#
# oneroster-sync container image.
#   docker build -t oneroster-sync .                         the daemon (the default, last stage)
#   docker build --target simulator -t oneroster-sim .       the OneRoster simulator (demo, tests)
#
# Runtime layout:
#   /usr/local/bin/oneroster-sync        ENTRYPOINT; CMD ["run"]
#   /etc/oneroster-sync/oneroster-sync.toml   the configuration (mount yours over it)
#   /etc/oneroster-sync/districts/       one *.toml per district (mount a directory or ConfigMap)
#   secrets                              DATABASE_URL and client_secret_env variables from the
#                                        environment, or client_secret_file = "/run/secrets/..."
# Runs as the distroless `nonroot` user (65532) with no shell; the root filesystem may be
# read-only (nothing is written locally). See docs/operator-guide.md.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# Dependencies first, in their own layer: it is rebuilt only when Cargo.toml/Cargo.lock change,
# not on every source change. The stub crates give cargo targets to build them for.
COPY Cargo.toml Cargo.lock ./
COPY simulator/Cargo.toml simulator/Cargo.toml
# (scripts/check-docker-stubs runs these same lines in CI.)
RUN mkdir -p src simulator/src benches \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && echo 'fn main() {}' > simulator/src/main.rs && touch simulator/src/lib.rs \
 && echo 'fn main() {}' > benches/pull.rs \
 && cargo build --release --locked --bins \
 && rm -rf src simulator/src benches
COPY src src
COPY migrations migrations
COPY simulator/src simulator/src
COPY benches benches
# COPY keeps the sources' old mtimes, which cargo would take as older than the stub build.
# The same command as .ci/run builds, so CI checks exactly what ships.
RUN touch src/lib.rs src/main.rs simulator/src/lib.rs simulator/src/main.rs \
 && cargo build --release --locked --bins \
 && target/release/oneroster-sync --version \
 && target/release/oneroster-sim --version

# glibc, libgcc and CA certificates (for the districts' https), nothing else: no shell, no
# package manager.
FROM gcr.io/distroless/cc-debian12:nonroot AS simulator
LABEL org.opencontainers.image.title="oneroster-sim" \
      org.opencontainers.image.description="OneRoster 1.1 / ClassLink Roster Server simulator for demos and tests of oneroster-sync" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /src/target/release/oneroster-sim /usr/local/bin/oneroster-sim
RUN ["/usr/local/bin/oneroster-sim", "--version"]
USER 65532:65532
EXPOSE 8900
ENTRYPOINT ["/usr/local/bin/oneroster-sim"]
CMD ["--listen", "0.0.0.0:8900"]

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="oneroster-sync" \
      org.opencontainers.image.description="Keeps a K-12 roster store in step with districts' OneRoster 1.1 APIs (ClassLink Roster Server)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.documentation="docs/operator-guide.md"
COPY --from=build /src/target/release/oneroster-sync /usr/local/bin/oneroster-sync
# The commented example, as a starting point; mount the real configuration over it.
COPY config/oneroster-sync.toml /etc/oneroster-sync/oneroster-sync.toml
COPY config/districts/ /etc/oneroster-sync/districts/
# Smoke test on the runtime image itself: the binary starts with this image's libraries.
RUN ["/usr/local/bin/oneroster-sync", "--version"]
ENV ONEROSTER_SYNC_CONFIG=/etc/oneroster-sync/oneroster-sync.toml
USER 65532:65532
# The [daemon] listen port of the shipped configurations (/healthz, /readyz, /metrics).
EXPOSE 9464
# GETs /readyz on [daemon] listen: 0 when the database answers and the scheduler is alive.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
  CMD ["/usr/local/bin/oneroster-sync", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/oneroster-sync"]
CMD ["run"]
