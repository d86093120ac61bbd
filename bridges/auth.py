"""Bearer tokens for the management endpoints (``--admin-token`` / ``INFEROXY_ADMIN_TOKEN``)."""

from __future__ import annotations

import hmac


def bearer_ok(expected: str | None, authorization: str | None) -> bool:
    """True when no token is configured, or ``authorization`` is ``Bearer <the token>``."""
    if not expected:
        return True
    if not authorization:
        return False
    scheme, _, token = authorization.strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode(), expected.encode())
