# The cocoon binary (gateway, router, dev network, CLI). Multi-stage, runs as non-root.
# The GPU worker image (vLLM base) is worker-agent/Dockerfile (issue #4).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p cocoon -p test-engine

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /var/lib/cocoon --create-home cocoon
COPY --from=build /src/target/release/cocoon /src/target/release/test-engine /usr/local/bin/
USER cocoon
WORKDIR /var/lib/cocoon
ENV COCOON__DATA_DIR=/var/lib/cocoon
EXPOSE 8080
ENTRYPOINT ["cocoon"]
CMD ["dev", "--listen", "0.0.0.0:8080"]
