"""The error of every wire format the client and the bridges share. Imports nothing of the
gateway: a bridge turns it into its own typed error (HTTP 400 / gRPC INVALID_ARGUMENT)."""

from __future__ import annotations

RequestId = str | int


class FrameError(ValueError):
    """A message that cannot be served as sent; ``request_id`` is None if unreadable."""

    def __init__(self, message: str, request_id: RequestId | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id
