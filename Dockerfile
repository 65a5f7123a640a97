# Builds the callsync binary for docker-compose.yml (curl: the api service's healthcheck).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin callsync

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 curl && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/callsync /usr/local/bin/callsync
# nothing in the image needs root
RUN useradd --system --no-create-home callsync
USER callsync
ENTRYPOINT ["callsync"]
