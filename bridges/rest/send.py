"""Sending an answer: the one send path of the reactor and of the task path.

``send_response`` turns an ``HttpResponse`` into its head (``http11.Connection.response``),
sends the head, body and tail views with one ``sendmsg`` per try, as far as the socket takes
them without waiting, and gives the borrowed buffers back (``release``: outputs in shared
memory) before it returns -- what the socket did not take is returned as a copy. The caller
then sends that copy its own way: the reactor when epoll says the socket is writable, the
task path with ``send_all`` under its send timeout.
"""

from __future__ import annotations

import socket as stdsocket

import trio

from bridges.rest.http11 import Connection, HttpResponse

Socket = stdsocket.socket


def send_response(sock: Socket, conn: Connection, response: HttpResponse) -> tuple[bytes, bool]:
    """Send what the socket takes of ``response`` now: (the rest, copied; keep-alive).
    ``OSError`` if the socket failed (``response`` is released either way)."""
    try:
        head, keep = conn.response(response)
        if conn.sends_body():
            return send_now(sock, [head, response.body, *response.tail]), keep
        return send_now(sock, [head]), keep
    finally:
        if response.release is not None:
            response.release()


def send_now(sock: Socket, parts: list[bytes | memoryview]) -> bytes:
    """Send as much of ``parts`` as the socket takes without waiting; the rest, copied."""
    parts = [p for p in parts if p]
    while parts:
        try:
            sent = sock.sendmsg(parts)
        except BlockingIOError:
            break
        while parts and sent >= len(parts[0]):
            sent -= len(parts.pop(0))
        if parts and sent:
            parts[0] = memoryview(parts[0])[sent:]
    return b"".join(parts)


async def send_all(sock: Socket, data: bytes) -> None:
    """Send all of ``data``, waiting for the socket as needed (the task path)."""
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        view = view[sent:]
