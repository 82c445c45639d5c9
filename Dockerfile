# syntax=docker/dockerfile:1
# Multi-stage: build with the Rust toolchain, run on a slim Debian as a non-root user.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src tests/it && echo 'fn main() {}' > src/main.rs && touch src/lib.rs tests/it/main.rs \
    && cargo build --release --locked --bin liveness-worker \
    && rm -rf src tests
COPY src src
COPY config config
COPY tests tests
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin liveness-worker \
    && strip target/release/liveness-worker

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin liveness
COPY --from=build /src/target/release/liveness-worker /usr/local/bin/liveness-worker
USER 10001:10001
ENV LIVENESS_TELEMETRY__LOG_FORMAT=json
# /metrics, /livez, /readyz
EXPOSE 9090
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s \
    CMD ["liveness-worker", "probe", "http://127.0.0.1:9090/livez"]
ENTRYPOINT ["liveness-worker"]
CMD ["run"]
