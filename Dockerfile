# The Inferoxy gateway image: inferoxy/gateway.
#
#   make images                         # offline from any image registry (docs/docker.md)
#   docker build -t inferoxy/gateway .  # elsewhere: FROM python:3.11-slim, wheels from PyPI
#
# Model copies are containers the gateway starts through the engine (--runtime docker, the
# default here), and they share three things with it that must be the *host's*, because the
# engine resolves their bind mounts on the host:
#
#   --pid host      segment names, container labels and the orphan sweep use host pids
#   --ipc host      /dev/shm is where tensors live
#   -v /run/inferoxy:/run/inferoxy
#                   the socket directory (TMPDIR) at the same path inside and out
#
#   sudo install -d -o 10001 -g 10001 -m 0700 /run/inferoxy
#   docker run -d --name inferoxy --pid host --ipc host --read-only \
#     --group-add "$(stat -c %g /var/run/docker.sock)" \
#     -v /var/run/docker.sock:/var/run/docker.sock \
#     -v /run/inferoxy:/run/inferoxy \
#     -v "$PWD/examples/images/models.yaml:/etc/inferoxy/models.yaml:ro" \
#     -p 127.0.0.1:8000:8000 -p 127.0.0.1:8001:8001 \
#     -e INFEROXY_DOCKER_REGISTRY=registry.example.com \
#     -e INFEROXY_DOCKER_USERNAME=deploy -e INFEROXY_DOCKER_PASSWORD=... \
#     inferoxy/gateway
#
# Publish only the ports you serve: 8000 HTTP, 8001 gRPC, 8002 metrics, 8003 WebSocket,
# 7787 ZeroMQ. `docker stop` drains it (SIGTERM; give it --stop-timeout for long batches) and
# it removes its model containers and shared-memory segments. Every flag of `inferoxy serve`
# is also an INFEROXY_* variable; move the HTTP port with INFEROXY_HTTP_PORT, not a flag (the
# HEALTHCHECK reads it).
#
# It runs as uid:gid 10001:10001, not root: the engine's socket is reached through its group
# (--group-add), and the socket directory must be that user's. Model containers run as the
# same uid:gid (their segments are mode 0600). Whoever holds the engine's socket can still
# start any container: treat this container as the engine's administrator.
ARG BASE=python:3.11-slim

# Build stage: a virtualenv with Inferoxy and its dependencies; only the virtualenv is kept.
# PIP_OPTIONS: `make images` passes --no-index --find-links <wheels built on the host>.
FROM ${BASE} AS build
ARG PIP_OPTIONS=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md /src/
COPY inferoxy/ /src/inferoxy/
COPY gateway/ /src/gateway/
COPY shm/ /src/shm/
COPY supervisor/ /src/supervisor/
COPY bridges/ /src/bridges/
COPY worker/ /src/worker/
COPY examples/ /src/examples/
RUN python3 -m venv /opt/inferoxy \
 && /opt/inferoxy/bin/pip install $PIP_OPTIONS /src \
 && /opt/inferoxy/bin/inferoxy serve --help >/dev/null \
 && /opt/inferoxy/bin/pip uninstall --quiet --yes pip setuptools  # 25 MB nothing runs

FROM ${BASE}
COPY --from=build /opt/inferoxy /opt/inferoxy
COPY examples/images/models.yaml /etc/inferoxy/models.yaml
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin inferoxy \
 && install -d -o 10001 -g 10001 -m 0700 /run/inferoxy

ENV PATH=/opt/inferoxy/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TMPDIR=/run/inferoxy \
    INFEROXY_RUNTIME=docker \
    INFEROXY_HOST=0.0.0.0 \
    INFEROXY_MODELS=/etc/inferoxy/models.yaml
USER 10001:10001
WORKDIR /run/inferoxy

# HTTP (v2), gRPC (v2), Prometheus metrics, WebSocket, ZeroMQ.
EXPOSE 8000 8001 8002 8003 7787
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v2/health/ready' % os.environ.get('INFEROXY_HTTP_PORT', '8000'), timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["inferoxy"]
CMD ["serve"]

# Labels last: their values change from build to build, and would rebuild every layer after them.
ARG VERSION=0.1.0
ARG REVISION=
ARG SOURCE=
LABEL org.opencontainers.image.title="inferoxy/gateway" \
      org.opencontainers.image.description="Inferoxy: Open Inference Protocol v2 gateway; model copies run as containers" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"
