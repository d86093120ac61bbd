"""Trivial responders: what a load generator reaches against a server that does nothing
(the ceiling of a row measured with that load generator, on the same cores).

    python -m bench.suite.ceiling http|grpc|zmq PORT

* ``http``: asyncio on raw sockets, reads each request (headers, Content-Length body) and
  answers a canned v2 JSON body, keep-alive;
* ``v2http``: the same, answering perf_analyzer's metadata / config / statistics calls and
  every infer with the model's outputs in the binary extension (canned zeros);
* ``grpc``: a ``grpc.aio`` server whose ``ModelInfer`` answers the model's outputs, canned,
  with the metadata, config and statistics perf_analyzer asks for;
* ``zmq``: a ROUTER that answers every ``[header, arrow]`` with an ok header and the same
  Arrow frame (what an identity model sends back).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

BODY = (b'{"model_name":"ceiling","outputs":[{"name":"OUTPUT","datatype":"FP32",'
        b'"shape":[1,1],"data":[0]}]}')
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)


class HttpResponder(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = bytearray()
        self.need = 0  # bytes the request being read still needs (its body: no rescans)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) < self.need:
            return
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
                self.need = end + 4 + length
                return
            self.need = 0
            request_line = bytes(self.buffer[: self.buffer.find(b"\r\n")])
            del self.buffer[: end + 4 + length]
            self.transport.write(self.answer(request_line))

    def answer(self, request_line: bytes) -> bytes:
        return RESPONSE


def _reply(body: bytes, extra: bytes = b"", kind: bytes = b"application/json") -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: " + kind + b"\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body)


class V2Responder(HttpResponder):
    """Just enough of the v2 HTTP surface for perf_analyzer (metadata, config, statistics,
    infer with the binary extension): every infer gets the model's outputs, canned, for one
    item. What perf_analyzer reaches on a server that does nothing."""

    replies: dict[bytes, bytes] = {}

    @classmethod
    def prepare(cls) -> None:
        import json

        from bench.suite.scenario import load_models

        def tensor(t: Any, batch: bool) -> dict[str, Any]:
            return {"name": t.name, "datatype": t.datatype,
                    "shape": ([-1] if batch else []) + list(t.shape)}

        for m in load_models().values():
            base = f"/v2/models/{m.name}".encode()
            meta = {"name": m.name, "versions": ["1"], "platform": "ceiling",
                    "inputs": [tensor(t, True) for t in m.inputs],
                    "outputs": [tensor(t, True) for t in m.outputs]}
            config = {"name": m.name, "max_batch_size": m.batch_size,
                      "input": [{"name": t.name, "data_type": f"TYPE_{t.datatype}",
                                 "dims": list(t.shape)} for t in m.inputs],
                      "output": [{"name": t.name, "data_type": f"TYPE_{t.datatype}",
                                  "dims": list(t.shape)} for t in m.outputs]}
            stats = {"model_stats": [{"name": m.name, "version": "1", "inference_count": 0,
                                      "execution_count": 0, "inference_stats": {}}]}
            header = json.dumps({"model_name": m.name, "outputs": [
                {"name": t.name, "datatype": t.datatype, "shape": [1, *t.shape],
                 "parameters": {"binary_data_size": t.item_bytes}} for t in m.outputs]}).encode()
            data = b"".join(b"\0" * t.item_bytes for t in m.outputs)
            cls.replies[b"GET " + base] = _reply(json.dumps(meta).encode())
            cls.replies[b"GET " + base + b"/config"] = _reply(json.dumps(config).encode())
            cls.replies[b"GET " + base + b"/stats"] = _reply(json.dumps(stats).encode())
            cls.replies[b"POST " + base + b"/infer"] = _reply(
                header + data, b"Inference-Header-Content-Length: "
                + str(len(header)).encode() + b"\r\n", b"application/octet-stream")
        server = json.dumps({"name": "ceiling", "version": "1", "extensions": []}).encode()
        cls.replies[b"GET /v2"] = _reply(server)

    def answer(self, request_line: bytes) -> bytes:
        method, _, rest = request_line.partition(b" ")
        target = rest.rpartition(b" ")[0].split(b"?")[0].replace(b"/versions/1", b"", 1)
        return self.replies.get(method + b" " + target, RESPONSE)


async def http(port: int, v2: bool = False) -> None:
    loop = asyncio.get_running_loop()
    if v2:
        V2Responder.prepare()
    server = await loop.create_server(V2Responder if v2 else HttpResponder, "127.0.0.1", port,
                                      backlog=1024)
    async with server:
        await server.serve_forever()


async def grpc_server(port: int) -> None:
    """A ``grpc.aio`` server that does nothing: canned infer answers (the model's outputs,
    zeros, for one item) and just enough metadata, config and statistics for perf_analyzer.
    What grpcio in Python reaches on these cores, with no work behind it."""
    import grpc
    from tritonclient.grpc import model_config_pb2 as mc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    from bench.suite.scenario import load_models

    models = load_models()
    replies: dict[str, Any] = {}
    for m in models.values():
        reply = pb.ModelInferResponse(model_name=m.name, model_version="1")
        for t in m.outputs:
            reply.outputs.add(name=t.name, datatype=t.datatype, shape=[1, *t.shape])
            reply.raw_output_contents.append(b"\0" * t.item_bytes)
        replies[m.name] = reply
    fallback = pb.ModelInferResponse(model_name="ceiling", model_version="1")
    fallback.outputs.add(name="OUTPUT", datatype="FP32", shape=[1, 1])
    fallback.raw_output_contents.append(b"\0\0\0\0")

    def metadata(name: str) -> Any:
        m = models[name]
        return pb.ModelMetadataResponse(
            name=name, versions=["1"], platform="ceiling",
            inputs=[pb.ModelMetadataResponse.TensorMetadata(
                name=t.name, datatype=t.datatype, shape=[-1, *t.shape]) for t in m.inputs],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(
                name=t.name, datatype=t.datatype, shape=[-1, *t.shape]) for t in m.outputs])

    def config(name: str) -> Any:
        m = models[name]
        return pb.ModelConfigResponse(config=mc.ModelConfig(
            name=name, max_batch_size=m.batch_size,
            input=[mc.ModelInput(name=t.name, data_type=mc.DataType.Value(f"TYPE_{t.datatype}"),
                                 dims=list(t.shape)) for t in m.inputs],
            output=[mc.ModelOutput(name=t.name,
                                   data_type=mc.DataType.Value(f"TYPE_{t.datatype}"),
                                   dims=list(t.shape)) for t in m.outputs]))

    class Servicer(pb_grpc.GRPCInferenceServiceServicer):
        async def ModelInfer(self, request: Any, context: object) -> object:
            return replies.get(request.model_name, fallback)

        async def ModelMetadata(self, request: Any, context: object) -> object:
            return metadata(request.name)

        async def ModelConfig(self, request: Any, context: object) -> object:
            return config(request.name)

        async def ModelStatistics(self, request: Any, context: object) -> object:
            return pb.ModelStatisticsResponse(model_stats=[pb.ModelStatistics(
                name=request.name, version="1")])

        async def ServerMetadata(self, request: object, context: object) -> object:
            return pb.ServerMetadataResponse(name="ceiling", version="1")

        async def ServerLive(self, request: object, context: object) -> object:
            return pb.ServerLiveResponse(live=True)

        async def ServerReady(self, request: object, context: object) -> object:
            return pb.ServerReadyResponse(ready=True)

        async def ModelReady(self, request: object, context: object) -> object:
            return pb.ModelReadyResponse(ready=True)

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
    if kind in ("http", "v2http"):
        asyncio.run(http(port, v2=kind == "v2http"))
    elif kind == "grpc":
        asyncio.run(grpc_server(port))
    elif kind == "zmq":
        zmq_echo(port)
    else:
        sys.exit(f"unknown responder {kind!r}: http, grpc or zmq")


if __name__ == "__main__":
    main()
