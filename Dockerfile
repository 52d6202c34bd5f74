# Builds the gateway; docker-compose.yml runs it in demo mode.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/amocrm-gateway /usr/local/bin/amocrm-gateway
USER 65534:65534
EXPOSE 8080
ENTRYPOINT ["amocrm-gateway"]
