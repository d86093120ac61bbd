"""The HTTP server and reactor under a fixed load in one process: for counting instructions.

    python -m bench.rest_inproc N
    valgrind --tool=callgrind python -m bench.rest_inproc 3200   # then 6400: the difference
                                                                   # / 3200 is per request

``N`` tiny v2 JSON POSTs over 16 loopback connections, served by ``HttpServer`` with the
canned fast path of ``bench.floor`` (answered from the reactor, no model). Server and client
share the process, so the work is the same on every run: an instruction count compares two
versions of the HTTP path where wall-clock figures on a shared machine cannot. Prints the
process CPU time per request (server and client), which is only indicative.
"""

from __future__ import annotations

import socket
import sys
import time

import trio

from bench.floor import BODY, Canned
from bridges.rest.http11 import HttpRequest, HttpResponse
from bridges.rest.server import HttpServer, RequestBody, open_listeners

CONNECTIONS = 16
TINY = (b'{"inputs":[{"name":"INPUT","datatype":"FP32","shape":[1,16],'
        b'"data":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]}]}')
REQUEST = (b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\n"
           b"Content-Type: application/json\r\nContent-Length: "
           + str(len(TINY)).encode() + b"\r\n\r\n" + TINY)


async def _client(port: int, count: int) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    try:
        for _ in range(count):
            sock.send(REQUEST)
            got = b""
            while not got.endswith(BODY):
                await trio.lowlevel.wait_readable(sock)
                data = sock.recv(65536)
                if not data:
                    raise RuntimeError("the server closed the connection")
                got += data
    finally:
        sock.close()


async def run(n: int) -> float:
    """Serve ``n`` requests; the process CPU seconds they took."""
    response = HttpResponse(200, ((b"content-type", b"application/json"),), BODY)

    async def handle(request: HttpRequest, body: RequestBody) -> HttpResponse:
        while await body.read():
            pass
        return response

    listeners = await open_listeners("127.0.0.1", 0)
    port = listeners[0].getsockname()[1]
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(HttpServer(handle, fast=Canned(response, handle)).serve,
                            listeners, shutdown)
        start = time.process_time()
        async with trio.open_nursery() as clients:
            for _ in range(CONNECTIONS):
                clients.start_soon(_client, port, n // CONNECTIONS)
        spent = time.process_time() - start
        shutdown.set()
    return spent


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 16000
    spent = trio.run(run, n)
    print(f"{n} requests, {spent / n * 1e6:.1f} us of process CPU per request "
          f"(server and client)")


if __name__ == "__main__":
    main()
