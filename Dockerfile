# syntax=docker/dockerfile:1
# The TMS server image: tms-server, the tms-client it imports (with the tms.v1 stubs) and the
# tms command, on Python 3.11, run by an unprivileged user. Build from the repository root:
#
#   docker build -t tms-server:latest .
#   docker build -t tms-server:examples --build-arg EXAMPLE_MODELS=true .   # examples/models too
#   docker run --rm -p 50051:50051 -v "$PWD/models:/models:ro" tms-server:latest
#
# Every setting is a TMS_* environment variable (`docker run ... tms-server:latest --help`).
# tests/test_deploy.py lints this file and runs its final stage's entrypoint and environment.

# -- builder: wheels of the workspace packages, and the locked versions of what they need -------
FROM python:3.11-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_NO_CACHE=1

# The uv of the dev dependency group (pyproject.toml): it reads uv.lock and builds the wheels.
RUN pip install --no-cache-dir --root-user-action=ignore uv==0.13.8

WORKDIR /src
COPY pyproject.toml uv.lock ./
COPY server/ server/
COPY python_client/ python_client/
COPY cli_client/ cli_client/
COPY examples/models/ examples/models/

# true: serve the example models (examples/models) from /models, with the Python packages they
# need (the `examples` dependency group). Anything else: /models is empty, to be mounted over
# or filled by an image built FROM this one.
ARG EXAMPLE_MODELS=false

# requirements.txt pins every third-party package to uv.lock's version and hashes (--locked:
# the build fails if uv.lock is out of date): the workspace's runtime dependencies
# (tms-server[otel], tms-client[pil,otel], tms-cli), plus the examples group when asked for.
# No dev, codegen or test tools.
RUN uv build --all-packages --wheel --out-dir /dist/wheels \
    && mkdir /dist/models \
    && set -- \
    && if [ "$EXAMPLE_MODELS" = "true" ]; then \
        set -- --group examples && cp -R examples/models/. /dist/models/; \
    fi \
    && uv export --locked --quiet --no-emit-workspace --no-default-groups "$@" \
        --format requirements.txt --output-file /dist/requirements.txt

# -- the image: the wheels installed without uv, a compiler or the builder's files --------------
FROM python:3.11-slim-bookworm

LABEL org.opencontainers.image.title="tms-server" \
      org.opencontainers.image.description="TMS (Tiny Model Server): Python models over gRPC" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric uid, so Kubernetes' runAsNonRoot can check it (deploy/deployment.yaml).
RUN groupadd --system --gid 10001 tms \
    && useradd --system --uid 10001 --gid tms --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin tms

# The builder's /dist is mounted for this step only: the wheels never become a layer.
# Third-party packages come with their hashes checked, then the three workspace wheels. (No
# `pip check`: with the examples, rapidocr asks for opencv-python, which pyproject.toml
# overrides with the headless build of the same OpenCV.)
RUN --mount=type=bind,from=builder,source=/dist,target=/dist \
    pip install --no-cache-dir --root-user-action=ignore --disable-pip-version-check \
        --no-deps --require-hashes --requirement /dist/requirements.txt \
    && pip install --no-cache-dir --root-user-action=ignore --disable-pip-version-check \
        --no-deps /dist/wheels/tms_client-*.whl /dist/wheels/tms_server-*.whl \
        /dist/wheels/tms_cli-*.whl \
    && tms-server --version && tms --version

# Empty unless built with EXAMPLE_MODELS=true; root-owned, so read-only to the server.
COPY --from=builder /dist/models/ /models/

# The root file system may be read-only (it is in deploy/): nothing writes bytecode, and HOME
# (where libraries put caches) is /tmp, the one writable place (an emptyDir in deploy/).
# TMS_METRICS_PORT is left to the deployment (deploy/deployment.yaml sets 9090).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMS_MODELS=/models \
    TMS_HOST=0.0.0.0 \
    TMS_PORT=50051

USER 10001:10001
# gRPC (tms.v1, OIP, grpc.health.v1, reflection), and Prometheus metrics when TMS_METRICS_PORT
# is set. No HEALTHCHECK: Kubernetes probes the gRPC health service itself.
EXPOSE 50051 9090

# Exec form: tms-server is PID 1 and gets SIGTERM, drains for TMS_GRACE_SECONDS, exits 0.
ENTRYPOINT ["tms-server"]
