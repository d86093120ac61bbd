"""The ZeroMQ bridge: a ROUTER socket on ``tcp://{host}:{zmq_port}``.

The protocol is specified in ``docs/protocols/zeromq-arrow.md`` (encoded and checked by
``wire``).

Theory of operation:

- One I/O task owns the socket and does every receive and every send on it, with ``NOBLOCK``;
  when there is nothing to do it waits on ``zmq.FD`` (edge-triggered: it re-checks
  ``EVENTS`` after every burst, docs/facts.md). It never waits for anything else.
- The I/O task reads a request's frames and its header (small), and refuses at once, from
  the I/O task itself, what cannot run: bad framing, an unreadable header, a frame over the
  size limit, or a connection or the bridge at its in-flight limit. Everything else becomes
  a request task in the bridge's nursery (``_handle``): it checks the Arrow batch and copies
  the inputs into slots (``infer.prepare``), drops the ZeroMQ frame, runs the parts, and
  hands its reply to the I/O task through a bounded memory channel, waking it.
- Replies are sent with ``ROUTER_MANDATORY``: a reply to a connection whose queue is full
  (``SNDHWM`` replies it has not read) is dropped, not waited for, and logged once per
  episode (an episode ends after ``DROP_EPISODE_S`` without drops); a reply to a connection
  that is gone is dropped quietly.

Bounds (memory the bridge can be made to hold): frames ``MAXMSGSIZE`` = max body + 1 MiB
(libzmq closes a connection that sends more); ``RCVHWM`` requests queued per connection
before the bridge reads them; frames read but not yet copied into slots: one burst
(``RECV_BURST`` requests or ``RECV_BURST_BYTES``, plus one frame); ``max_inflight_per_peer``
and ``max_inflight`` requests between read and reply (each holds slab slots, bounded by
``--shm-limit-bytes``, not its frame); ``SNDHWM`` replies queued per connection. Not bounded
by the bridge: libzmq buffers a whole multipart message before delivering it, so a message
of very many frames is held in full; HWMs count messages, not bytes, so the byte bounds
scale with ``--max-body-bytes``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

import trio
import zmq

from bridges.zmq.infer import prepare
from gateway.core import Gateway
from gateway.errors import InferoxyError, InvalidArgument, PayloadTooLarge, Unavailable
from inferoxy.protocol.zmq_header import (
    FrameError,
    Header,
    RequestId,
    encode_error,
    parse_header,
    peek_request_id,
)

log = logging.getLogger("inferoxy.zmq")

MAX_INFLIGHT_PER_PEER = 32
MAX_INFLIGHT = 1024
# Replies queued per connection that does not read them. As many as a connection may have in
# flight: a client within its allowance never loses a reply, however bursty the answers are
# (with 16, a burst of answers to a client that was still sending its 32 got dropped).
SNDHWM = MAX_INFLIGHT_PER_PEER
RCVHWM = 8  # requests queued per connection before the bridge reads them
OVERSIZE_SLACK = 1 << 20  # frames this much over the limit still get a 413
RECV_BURST = 64  # requests read before the I/O task lets the request tasks run...
RECV_BURST_BYTES = 64 << 20  # ...or this many bytes of them
LINGER_MS = 200  # how long replies already queued may take to leave at shutdown
DROP_EPISODE_S = 10.0  # a client whose replies were dropped is logged again after this long

Envelope = list[bytes]
Reply = tuple[Envelope, list[Any]]


class ZmqBridge:
    def __init__(self, gateway: Gateway, endpoint: str, *,
                 max_inflight_per_peer: int = MAX_INFLIGHT_PER_PEER,
                 max_inflight: int = MAX_INFLIGHT) -> None:
        self.gateway = gateway
        self.endpoint = endpoint
        self.max_frame_bytes = gateway.settings.max_body_bytes
        self.max_header_bytes = gateway.settings.max_frame_header_bytes
        self.max_inflight_per_peer = max_inflight_per_peer
        self.max_inflight = max_inflight
        self.inflight = 0
        self._inflight_by_peer: Counter[bytes] = Counter()
        self.replies_dropped = 0
        # peers whose replies are being dropped: [replies dropped, when the last was]
        self._dropping: dict[bytes, list[float]] = {}
        self._reply_send, self._reply_recv = trio.open_memory_channel[Reply](max_inflight)
        self._idle: trio.CancelScope | None = None
        self._ctx = zmq.Context(io_threads=1)
        self._sock: zmq.Socket[bytes] = self._ctx.socket(zmq.ROUTER)
        sock = self._sock
        sock.setsockopt(zmq.LINGER, LINGER_MS)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.SNDHWM, SNDHWM)
        sock.setsockopt(zmq.RCVHWM, RCVHWM)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_frame_bytes + OVERSIZE_SLACK)
        if "[" in endpoint:
            sock.setsockopt(zmq.IPV6, 1)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise OSError(exc.errno, f"ZeroMQ bridge cannot bind {endpoint}: {exc}") from None
        self._nursery: trio.Nursery | None = None

    # -- running -----------------------------------------------------------------------------

    async def run(self, shutdown: trio.Event, *,
                  task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._io)
                task_status.started([self.endpoint])
                await shutdown.wait()
                # The gateway has drained: requests still here finish or fail quickly.
                with trio.move_on_after(self.gateway.settings.drain_timeout_s):
                    while self.inflight or self._reply_recv.statistics().current_buffer_used:
                        await trio.sleep(0.005)
                nursery.cancel_scope.cancel()
        finally:
            trio.lowlevel.notify_closing(self._sock.FD)
            self._sock.close(linger=LINGER_MS)
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._ctx.term, abandon_on_cancel=True)

    def close(self) -> None:
        self._sock.close(linger=0)
        self._ctx.term()

    async def _io(self) -> None:
        sock = self._sock
        fd = int(sock.getsockopt(zmq.FD))
        while True:
            busy = False
            burst_bytes = 0
            for _ in range(RECV_BURST):
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                busy = True
                burst_bytes += sum(len(f) for f in frames)
                try:
                    self._on_request(frames)
                except Exception:  # a bug must not stop the bridge for everyone
                    log.exception("ZeroMQ bridge failed to take a request")
                del frames
                if burst_bytes > RECV_BURST_BYTES:
                    break
            while True:
                try:
                    envelope, parts = self._reply_recv.receive_nowait()
                except trio.WouldBlock:
                    break
                self._send(envelope, parts)
                busy = True
            if busy:
                await trio.lowlevel.checkpoint()
                continue
            if int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                continue
            with trio.CancelScope() as self._idle:
                await trio.lowlevel.wait_readable(fd)
            self._idle = None

    def _wake(self) -> None:
        if self._idle is not None:
            self._idle.cancel()

    # -- requests ------------------------------------------------------------------------------

    def _on_request(self, frames: list[zmq.Frame]) -> None:
        peer = frames[0].bytes
        body = frames[1:]
        envelope = [peer]
        if body and len(body[0]) == 0:  # a REQ client's delimiter
            envelope.append(b"")
            body = body[1:]
        if len(body) != 2:
            rid = peek_request_id(body[0].buffer, self.max_header_bytes) if body else None
            self._send_error(envelope, rid, 400,
                             f"a request is 2 frames [header, arrow], got {len(body)}")
            return
        header_frame, arrow_frame = body
        try:
            header = parse_header(header_frame.buffer, self.max_header_bytes)
        except FrameError as exc:
            self._send_error(envelope, exc.request_id, InvalidArgument.http_status, exc.message)
            return
        size = len(arrow_frame)
        if size > self.max_frame_bytes:
            self._send_error(
                envelope, header.id, PayloadTooLarge.http_status,
                f"the arrow frame of {size} bytes exceeds the limit of {self.max_frame_bytes}",
            )
            return
        if self.inflight >= self.max_inflight:
            self._send_error(envelope, header.id, Unavailable.http_status,
                             f"the ZeroMQ bridge has {self.inflight} requests in flight, its "
                             f"limit; retry later")
            return
        if self._inflight_by_peer[peer] >= self.max_inflight_per_peer:
            self._send_error(envelope, header.id, Unavailable.http_status,
                             f"this connection has {self.max_inflight_per_peer} requests in "
                             f"flight, its limit; wait for replies before sending more")
            return
        assert self._nursery is not None
        self.inflight += 1
        self._inflight_by_peer[peer] += 1
        self._nursery.start_soon(self._handle, envelope, header, arrow_frame)

    async def _handle(self, envelope: Envelope, header: Header, frame: zmq.Frame) -> None:
        try:
            try:
                prepared = prepare(self.gateway, header, frame.buffer)
                del frame  # the request's bytes are in slots now: free the ZeroMQ frame
                parts = await prepared.run()
                status = 200
            except InferoxyError as exc:
                status = exc.http_status
                parts = [encode_error(header.id, exc.http_status, exc.message)]
            except Exception:
                log.exception("ZeroMQ request %r of model %r failed", header.id, header.model)
                status = 500
                parts = [encode_error(header.id, 500, "internal error")]
            self.gateway.bridge_answers.answered("zmq", status)
            await self._reply_send.send((envelope, parts))
            self._wake()
        finally:
            self.inflight -= 1
            peer = envelope[0]
            self._inflight_by_peer[peer] -= 1
            if self._inflight_by_peer[peer] <= 0:
                del self._inflight_by_peer[peer]

    # -- replies -------------------------------------------------------------------------------

    def _send_error(self, envelope: Envelope, rid: RequestId | None, code: int,
                    message: str) -> None:
        self.gateway.bridge_answers.answered("zmq", code)
        self._send(envelope, [encode_error(rid, code, message)])

    def _send(self, envelope: Envelope, parts: list[Any]) -> None:
        peer = envelope[0]
        try:
            self._sock.send_multipart([*envelope, *parts], zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.replies_dropped += 1
            episode = self._dropping.get(peer)
            if episode is None:
                if len(self._dropping) >= 4096:
                    self._dropping.clear()
                self._dropping[peer] = [1, time.monotonic()]
                log.warning(
                    "ZeroMQ client %s is not reading its replies (%d queued); dropping its "
                    "replies until it reads again", peer.hex(), SNDHWM,
                )
            else:
                episode[0] += 1
                episode[1] = time.monotonic()
            return
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:  # the client went away
                log.debug("ZeroMQ client %s is gone; reply dropped", peer.hex())
                self._dropping.pop(peer, None)
                return
            log.warning("ZeroMQ reply to client %s not sent: %s", peer.hex(), exc)
            return
        episode = self._dropping.get(peer)
        if episode is not None and time.monotonic() - episode[1] > DROP_EPISODE_S:
            del self._dropping[peer]
            log.info("ZeroMQ client %s reads its replies again; %d were dropped",
                     peer.hex(), episode[0])


async def serve_zmq(gateway: Gateway, host: str, port: int, shutdown: trio.Event, *,
                    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """The ZeroMQ bridge until ``shutdown`` is set (then it finishes what it holds)."""
    address = f"[{host}]" if ":" in host else host
    bridge = ZmqBridge(gateway, f"tcp://{address}:{port}")
    await bridge.run(shutdown, task_status=task_status)
