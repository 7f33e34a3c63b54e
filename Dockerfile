# The syncgate gateway image (docs/deployment.md). Not built in this repository's CI: no Docker daemon there;
# CI only validates docker-compose.yml (`docker-compose config`).
FROM rust:1-bookworm AS build
# pg_walstream (the replication transport) links the system libpq.
RUN apt-get update && apt-get install -y --no-install-recommends libpq-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin syncgate

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libpq5 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/syncgate /usr/local/bin/syncgate
ENTRYPOINT ["syncgate"]
