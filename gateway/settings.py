"""Gateway settings: every one a command-line flag and an ``INFEROXY_*`` environment variable."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Settings:
    models: str = "examples/models.yaml"
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    zmq_port: int = 7787
    ws_port: int = 8003
    ws_max_inflight: int = 8  # frames in flight per WebSocket stream
    runtime: str = "local"
    run_dir: str = ""  # worker sockets; "" = a private temporary directory
    gpus: str | None = None  # "0,1,3" overrides discovery; "" means none
    shm_prefix: str = "ifx"
    shm_limit_bytes: int = 4 << 30  # request-input slabs of this gateway
    max_body_bytes: int = 256 << 20
    allow_client_shm: bool = False  # the v2 system shared-memory extension
    max_client_regions: int = 256
    # limits on what one request may ask for (gateway.admission.Limits); each a clear error
    max_tensor_elements: int = 1 << 28  # elements of one input, batch dimension included
    max_inputs: int = 64  # inputs of one request
    max_outputs: int = 64  # outputs one request names
    max_bytes_elements: int = 1 << 20  # elements of one BYTES input
    max_bytes_element_bytes: int = 64 << 20  # one element of a BYTES input
    max_frame_header_bytes: int = 64 << 10  # JSON header of a WebSocket or ZeroMQ frame
    max_grpc_metadata_bytes: int = 16 << 10  # gRPC request metadata (headers)
    max_live_sequences: int = 4096  # sequences open or waiting, all stateful models together
    request_timeout_s: float = 60.0  # when a request names no timeout
    drain_timeout_s: float = 10.0
    # SIGTERM: readiness goes false and requests are still served this long before the drain
    # refuses new ones (a balancer's health check must see "not ready" first)
    drain_grace_s: float = 0.0
    startup_timeout_s: float = 120.0
    heartbeat_s: float = 1.0
    heartbeat_timeout_s: float = 10.0
    hang_timeout_s: float = 60.0  # one batch (or health check) running longer is a hang
    health_interval_s: float = 5.0  # how often workers call a model's health()
    crash_loop_exits: int = 5  # this many exits of a copy ...
    crash_loop_window_s: float = 60.0  # ... within this window is a crash loop
    simulate_gpus: int = 0  # N > 0: N fake GPUs (placement and scaling; copies run on the CPU)
    alert_webhook: str | None = None  # alerts are POSTed here (Slack-compatible); None: log only
    alert_recover_hold_s: float = 10.0  # "recovered" is sent once it held this long
    # the model registry and the management API (gateway.registry, bridges.rest.admin)
    redis: str | None = None  # redis://host:port/db; None: the in-process registry
    redis_prefix: str = "inferoxy:"  # every registry key and channel starts with this
    admin_host: str = "127.0.0.1"  # the management API: loopback only unless told otherwise
    admin_port: int = 8004
    admin_token: str | None = None  # management calls need "Bearer <token>" when set
    # --runtime docker
    docker_host: str = ""  # engine URL; "" = $DOCKER_HOST, else the local socket
    docker_registry: str = ""  # registry the credentials below are for ("" = Docker Hub)
    docker_username: str = ""
    docker_password: str = ""
    docker_network: str = ""  # attach model containers to this network
    docker_volumes: str = ""  # extra bind mounts for model containers: SRC:DST[:ro],...
    log_level: str = "INFO"
    log_format: str = "text"
    # the HTTP data plane (bridges.rest.server)
    max_header_bytes: int = 64 << 10  # request line and header fields; 431 beyond
    header_timeout_s: float = 10.0  # a request head that takes longer: 408, connection closed
    keepalive_timeout_s: float = 75.0  # an idle keep-alive connection is closed after this
    max_connections: int = 4096  # open HTTP connections; one more is answered 503 and closed
    # Data-plane processes (bridges.dataplane): "auto" = one per usable core; "0" = the data
    # path runs in the control process, as one process.
    workers: str = "auto"
