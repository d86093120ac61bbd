# The Inferoxy gateway image.
#
#   docker build -t inferoxy:0.1 .
#
# Model copies are containers the gateway starts through the engine (--runtime docker, the
# default here), and they share three things with it that must be the *host's*, because the
# engine resolves their bind mounts on the host:
#
#   --pid host      segment names, container labels and the orphan sweep use host pids
#   --ipc host      /dev/shm is where tensors live (or: -v /dev/shm:/dev/shm)
#   -v /run/inferoxy:/run/inferoxy
#                   the socket directory (TMPDIR) at the same path inside and out
#
#   docker run -d --name inferoxy --pid host --ipc host \
#     -v /var/run/docker.sock:/var/run/docker.sock \
#     -v /run/inferoxy:/run/inferoxy \
#     -v "$PWD/models.yaml:/etc/inferoxy/models.yaml:ro" \
#     -p 8000-8003:8000-8003 -p 7787:7787 \
#     -e INFEROXY_DOCKER_REGISTRY=registry.example.com \
#     -e INFEROXY_DOCKER_USERNAME=deploy -e INFEROXY_DOCKER_PASSWORD=... \
#     inferoxy:0.1
#
# It runs as root (the engine's socket needs it), so model containers run as root too.
# Every flag of `inferoxy serve` is also an INFEROXY_* variable.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TMPDIR=/run/inferoxy \
    INFEROXY_RUNTIME=docker \
    INFEROXY_HOST=0.0.0.0 \
    INFEROXY_MODELS=/etc/inferoxy/models.yaml

WORKDIR /opt/inferoxy
COPY pyproject.toml README.md ./
COPY inferoxy/ inferoxy/
COPY gateway/ gateway/
COPY shm/ shm/
COPY supervisor/ supervisor/
COPY bridges/ bridges/
COPY worker/ worker/
COPY examples/ examples/
RUN pip install --no-cache-dir . && mkdir -p /run/inferoxy /etc/inferoxy \
 && cp examples/models.yaml /etc/inferoxy/models.yaml

# HTTP (v2), gRPC (v2), Prometheus metrics, WebSocket, ZeroMQ.
EXPOSE 8000 8001 8002 8003 7787
STOPSIGNAL SIGTERM
ENTRYPOINT ["inferoxy"]
CMD ["serve"]
