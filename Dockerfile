# Builds the gateway; docker-compose.yml runs it in demo mode.
FROM rust:1-bookworm AS build
WORKDIR /src
# Everything cargo reads for the binary: the manifest's bench targets must exist, and the build
# script embeds GraphiQL's committed assets.
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY assets ./assets
COPY benches ./benches
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/amocrm-gateway /usr/local/bin/amocrm-gateway
USER 65534:65534
EXPOSE 8080
ENTRYPOINT ["amocrm-gateway"]
