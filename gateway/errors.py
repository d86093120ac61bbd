"""Typed errors, each carrying the status every protocol answers with.

Bridges translate these; nothing else reaches a client. Messages name the field and what was
expected, never a shared-memory name or a file path.
"""

from __future__ import annotations


class InferoxyError(Exception):
    http_status = 500
    grpc_code = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(InferoxyError):
    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


class PayloadTooLarge(InvalidArgument):
    http_status = 413


class NotFound(InferoxyError):
    http_status = 404
    grpc_code = "NOT_FOUND"


class Forbidden(InferoxyError):
    """A feature this server was not started with (e.g. client shared memory)."""

    http_status = 403
    grpc_code = "PERMISSION_DENIED"


class Conflict(InferoxyError):
    """The request clashes with something in progress (a sequence another stream holds)."""

    http_status = 409
    grpc_code = "ALREADY_EXISTS"


class Unavailable(InferoxyError):
    """Overload or not ready: the client may retry after ``retry_after_s``."""

    http_status = 503
    grpc_code = "UNAVAILABLE"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(InferoxyError):
    http_status = 504
    grpc_code = "DEADLINE_EXCEEDED"


class Unsupported(InferoxyError):
    """The request needs something this endpoint does not do (as Triton's UNSUPPORTED)."""

    http_status = 501
    grpc_code = "UNIMPLEMENTED"


class ModelError(InferoxyError):
    """The model raised, or its copy died while running the request."""

    http_status = 500
    grpc_code = "INTERNAL"


# Triton's wording for the errors clients and their tests match on (docs/protocols/v2.md,
# "Error wording"); the status codes stay ours.

def unknown_model(name: str) -> NotFound:
    return NotFound(f"Request for unknown model: {name!r} is not found")


def unknown_version(name: str, version: str) -> NotFound:
    return NotFound(f"Request for unknown model: {name!r} version {version} is not found")


def model_not_loaded(name: str) -> NotFound:
    return NotFound(
        f"Request for unknown model: {name!r} has no available versions (it is not loaded)"
    )


def load_failed(name: str, why: str) -> str:
    """The message of a failed repository load (Triton's tests look for "failed to load")."""
    return f"failed to load {name!r}, {why}"
