# The cocoon binary (gateway, router, dev network, CLI). Multi-stage, runs as non-root.
# The GPU worker image (vLLM base) is worker-agent/Dockerfile (issue #4).
# The web dashboard (dashboard/, TypeScript bundled by esbuild): served from disk at /dashboard.
FROM node:20-bookworm-slim AS dashboard
WORKDIR /src/dashboard
COPY dashboard/package.json dashboard/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY dashboard/ ./
RUN node build.mjs

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p cocoon -p test-engine

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /var/lib/cocoon --create-home cocoon
COPY --from=build /src/target/release/cocoon /src/target/release/test-engine /usr/local/bin/
COPY --from=dashboard /src/dashboard/dist /usr/share/cocoon/dashboard
USER cocoon
WORKDIR /var/lib/cocoon
ENV COCOON__DATA_DIR=/var/lib/cocoon \
    COCOON__GATEWAY__DASHBOARD__ASSETS_DIR=/usr/share/cocoon/dashboard
EXPOSE 8080
ENTRYPOINT ["cocoon"]
CMD ["dev", "--listen", "0.0.0.0:8080"]
