"""Trivial responders: what a load generator reaches against a server that does nothing
(the ceiling of a row measured with that load generator, on the same cores).

    python -m bench.suite.ceiling http|grpc|zmq PORT

* ``http``: asyncio on raw sockets, reads each request (headers, Content-Length body) and
  answers a canned v2 JSON body, keep-alive;
* ``grpc``: a ``grpc.aio`` server whose ``ModelInfer`` answers one canned output;
* ``zmq``: a ROUTER that answers every ``[header, arrow]`` with an ok header and the same
  Arrow frame (what an identity model sends back).
"""

from __future__ import annotations

import asyncio
import sys

BODY = (b'{"model_name":"ceiling","outputs":[{"name":"OUTPUT","datatype":"FP32",'
        b'"shape":[1,1],"data":[0]}]}')
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)


class HttpResponder(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in bytes(self.buffer[:end]).split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            del self.buffer[: end + 4 + length]
            self.transport.write(RESPONSE)


async def http(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(HttpResponder, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


async def grpc_server(port: int) -> None:
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    reply = pb.ModelInferResponse(model_name="ceiling", model_version="1")
    reply.outputs.add(name="OUTPUT", datatype="FP32", shape=[1, 1])
    reply.raw_output_contents.append(b"\0\0\0\0")

    class Servicer(pb_grpc.GRPCInferenceServiceServicer):
        async def ModelInfer(self, request: object, context: object) -> object:
            return reply

    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def zmq_echo(port: int) -> None:
    import orjson
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(f"tcp://127.0.0.1:{port}")
    while True:
        peer, header, arrow = sock.recv_multipart(copy=False)
        rid = orjson.loads(header.bytes)["id"]
        sock.send_multipart([peer, orjson.dumps({"id": rid, "status": "ok"}), arrow],
                            copy=False)


def main() -> None:
    kind, port = sys.argv[1], int(sys.argv[2])
    if kind == "http":
        asyncio.run(http(port))
    elif kind == "grpc":
        asyncio.run(grpc_server(port))
    elif kind == "zmq":
        zmq_echo(port)
    else:
        sys.exit(f"unknown responder {kind!r}: http, grpc or zmq")


if __name__ == "__main__":
    main()
