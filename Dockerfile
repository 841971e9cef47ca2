# Headroom's services, built from this workspace. One build stage compiles
# every binary; each service is a small runtime image running as a non-root
# user. Pick one with --target and --build-arg BIN, e.g.
#   docker build --target service --build-arg BIN=headroom-collector -t headroom/collector .
#   docker build --target predictor -t headroom/predictor .
# (docker-compose.yml builds all of them.)

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
      -p headroom-agent -p headroom-collector -p headroom-predictor \
      -p headroom-allocator -p headroom-training -p headroom-serving \
 && mkdir -p /out \
 && cp target/release/headroom-agent target/release/headroom-collector \
       target/release/headroom-predictor target/release/headroom-allocator \
       target/release/headroom-train target/release/headroom-probe /out/

# ONNX Runtime for the predictor, from the same wheel the local stack uses.
FROM python:3.11-slim-bookworm AS onnxruntime
RUN pip install --no-cache-dir onnxruntime==1.22.1 \
 && cp "$(python -c 'import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))')"/capi/libonnxruntime.so.1.22.1 /libonnxruntime.so

FROM debian:bookworm-slim AS base
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates fonts-dejavu-core \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/headroom --create-home headroom
COPY --from=build /out/headroom-probe /usr/local/bin/headroom-probe
USER 10001:10001
WORKDIR /var/lib/headroom

# Any one binary: agent, collector, allocator or headroom-train.
FROM base AS service
ARG BIN=headroom-collector
COPY --from=build /out/${BIN} /usr/local/bin/service
ENV HEADROOM_LISTEN=0.0.0.0:50050 HEADROOM_METRICS_LISTEN=0.0.0.0:9100
ENTRYPOINT ["/usr/local/bin/service"]

# The predictor, with ONNX Runtime beside it.
FROM base AS predictor
COPY --from=build /out/headroom-predictor /usr/local/bin/headroom-predictor
COPY --from=onnxruntime /libonnxruntime.so /usr/local/lib/libonnxruntime.so
ENV ORT_DYLIB_PATH=/usr/local/lib/libonnxruntime.so \
    HEADROOM_LISTEN=0.0.0.0:50053 HEADROOM_METRICS_LISTEN=0.0.0.0:9100 \
    HEADROOM_MODEL=/models/model.onnx
EXPOSE 50053 9100
ENTRYPOINT ["/usr/local/bin/headroom-predictor"]

# The trainer: simulate or read history, train, write model.onnx.
FROM base AS trainer
COPY --from=build /out/headroom-train /usr/local/bin/headroom-train
ENTRYPOINT ["/usr/local/bin/headroom-train"]
