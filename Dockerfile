# syntax=docker/dockerfile:1
# Build: docker build -t oneroster-sync .
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so they are cached while only the sources change.
COPY Cargo.toml Cargo.lock ./
COPY simulator/Cargo.toml simulator/Cargo.toml
RUN mkdir -p src simulator/src \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && echo 'fn main() {}' > simulator/src/main.rs && touch simulator/src/lib.rs \
 && cargo build --release --locked --bins \
 && rm -rf src simulator/src
COPY src src
COPY migrations migrations
COPY simulator/src simulator/src
RUN touch src/lib.rs src/main.rs simulator/src/lib.rs simulator/src/main.rs \
 && cargo build --release --locked --bins \
 && target/release/oneroster-sync --version

FROM debian:bookworm-slim
LABEL org.opencontainers.image.title="oneroster-sync" \
      org.opencontainers.image.description="Keeps a K-12 roster store in step with districts' OneRoster 1.1 APIs (ClassLink Roster Server)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home oneroster
COPY --from=build /src/target/release/oneroster-sync /usr/local/bin/oneroster-sync
COPY --from=build /src/target/release/oneroster-sim /usr/local/bin/oneroster-sim
COPY config/oneroster-sync.toml /etc/oneroster-sync/oneroster-sync.toml
ENV ONEROSTER_SYNC_CONFIG=/etc/oneroster-sync/oneroster-sync.toml
USER 10001
ENTRYPOINT ["/usr/local/bin/oneroster-sync"]
CMD ["run"]
