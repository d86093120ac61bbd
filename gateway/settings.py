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
    runtime: str = "local"
    gpus: str | None = None  # "0,1,3" overrides discovery; "" means none
    shm_prefix: str = "ifx"
    shm_limit_bytes: int = 4 << 30  # request-input slabs of this gateway
    max_body_bytes: int = 256 << 20
    allow_client_shm: bool = False  # the v2 system shared-memory extension
    max_client_regions: int = 256
    request_timeout_s: float = 60.0  # when a request names no timeout
    drain_timeout_s: float = 10.0
    startup_timeout_s: float = 120.0
    heartbeat_s: float = 1.0
    heartbeat_timeout_s: float = 10.0
    log_level: str = "INFO"
    log_format: str = "text"
