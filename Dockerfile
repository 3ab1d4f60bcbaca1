# One image for every role of marketing-base: `marketing api`, `task-repo`, `worker`,
# `scheduler`, `campaign-processor`, `migrate`, or everything in one process with the default
# `serve`. docker-compose.yml (at the repository root) builds it; docs/DEPLOYMENT.md explains
# the roles.
#
# The dependencies are compiled in a layer of their own (cargo-chef): a change to the
# project's sources rebuilds only the project's crates, not the ~300 crates it depends on.

# --- toolchain with cargo-chef -------------------------------------------------------------
FROM rust:1-bookworm AS chef
# --locked: cargo-chef's own dependency versions, as its authors tested them.
RUN cargo install --locked cargo-chef
WORKDIR /src

# --- planner: the dependency recipe (Cargo.toml and Cargo.lock files only) ------------------
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# --- builder -------------------------------------------------------------------------------
FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# This layer changes only when Cargo.toml or Cargo.lock files do.
RUN cargo chef cook --release --locked --recipe-path recipe.json -p marketing
COPY . .
# --locked: the image is built from exactly the dependency versions in Cargo.lock. `install -s`
# strips the line tables the release profile keeps for profiling: 146 MB → 27 MB.
RUN cargo build --release --locked -p marketing \
 && install -s -m 0755 target/release/marketing /usr/local/bin/marketing

# --- runtime -------------------------------------------------------------------------------
# Same Debian release as the builder, so the binary finds the glibc it was linked against.
FROM debian:bookworm-slim
# ca-certificates: SMTP relays behind TLS. (The binary also carries the Mozilla roots; the
# system store is here for tools and for relays whose CA an operator adds.) curl: the
# healthchecks, and an operator's `docker-compose exec task-repo-service curl …`.
# Versions are not pinned: bookworm's security updates should reach the image on rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 marketing \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
            --shell /usr/sbin/nologin marketing \
 && mkdir /data \
 && chown marketing:marketing /data
COPY --from=builder /usr/local/bin/marketing /usr/local/bin/marketing

USER 10001:10001
# The working directory holds what the embedded defaults write: marketing.db (SQLite), outbox/
# (.eml files when SMTP_URL is unset) and an optional .env. Mount a volume here for `serve`.
WORKDIR /data
# Inside a container the listeners must accept connections from outside it; the binary's own
# defaults (127.0.0.1) suit a developer's machine, not a container.
ENV API_BIND=0.0.0.0:8000 \
    TASK_REPO_BIND=0.0.0.0:8503
EXPOSE 8000 8503
# No HEALTHCHECK here: each role listens on a different port (or only on its metrics port);
# docker-compose.yml checks each role with curl on its own port.
ENTRYPOINT ["marketing"]
CMD ["serve"]
