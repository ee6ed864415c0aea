# Cloud inference server: cfqa cloud serve (gRPC, port 50051), the lean [cloud] extra.
#   docker build -t cfqa-cloud .
#   # plaintext, no token: publish on the host's loopback only
#   docker run --rm -p 127.0.0.1:50051:50051 cfqa-cloud
#   # token from a mounted file (never on the command line, where `ps` shows it) over TLS
#   docker run --rm -p 50051:50051 -v $PWD/secrets:/run/secrets:ro -v $PWD/certs:/certs:ro cfqa-cloud \
#       --token-file /run/secrets/cfqa_token --tls-cert /certs/cert.pem --tls-key /certs/key.pem
#   # or from the environment: docker run --env-file cfqa.env ... (a file holding CFQA_TOKEN=...)
# The server binds 127.0.0.1 by default; inside the container it must bind every
# interface to be reachable through the published port, so the entry point says so.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    OMP_NUM_THREADS=2 \
    MALLOC_ARENA_MAX=2

# Codec tools used by the block codecs besides the FFmpeg bundled with PyAV.
RUN apt-get update \
 && apt-get install -y --no-install-recommends x265 libde265-examples \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/cfqa
COPY pyproject.toml README.md ./
COPY cfqa_core ./cfqa_core
COPY edge ./edge
COPY cloud ./cloud
COPY proto ./proto
COPY sim ./sim

# torch==2.13.0 (pinned in [cloud]) from the CPU wheel index: no CUDA libraries in the image.
# [cloud] is the server alone: no simulator, plotting, pandas or training extras.
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
 && pip install ".[cloud]"

RUN useradd --system --uid 10001 cfqa
USER cfqa

EXPOSE 50051 9100
# SIGTERM (docker stop) finishes in-flight calls within --grace seconds, a hard limit (the process
# exits at most a few seconds later); keep docker's stop timeout above it: docker stop -t 40.
STOPSIGNAL SIGTERM
# Plaintext probe of the standard health service; with TLS, override it (docker run --no-healthcheck).
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; ch = grpc.insecure_channel('127.0.0.1:50051'); assert g.HealthStub(ch).Check(h.HealthCheckRequest(), timeout=4).status == h.HealthCheckResponse.SERVING" || exit 1
# Prometheus metrics on 9100 (unauthenticated: publish it on the host's loopback, -p 127.0.0.1:9100:9100).
ENTRYPOINT ["cfqa", "cloud", "serve", "--bind", "0.0.0.0", "--port", "50051", "--grace", "30", \
            "--metrics-port", "9100", "--metrics-bind", "0.0.0.0"]
