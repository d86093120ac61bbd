"""gRPC in a data-plane process: infer for the models it batches; the rest, byte for byte,
to the control process.

Every data-plane process serves the public gRPC port (grpcio's SO_REUSEPORT). ``ModelInfer``
for a stateless model runs here, exactly as in the control process (``bridges.grpc``, over
the ``DataPlane``). Every other RPC — health, metadata, statistics, the repository, shared
memory, infer for stateful models, and ``ModelStreamInfer`` (streams carry sequences) — is
forwarded unchanged over a Unix socket to the control process's own gRPC server, and its
answer (or status) comes back unchanged: one place answers them, whatever the connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from bridges.dataplane.plane import DataPlane
from bridges.grpc import codec
from bridges.grpc.codec import WireRequest
from bridges.grpc.portal import SHUTTING_DOWN, Portal
from bridges.grpc.server import SERVICE, Handlers, Unary, abort
from bridges.grpc.service import Service
from gateway.errors import Unavailable

# Headers that belong to this hop, not to the request.
_HOP_HEADERS = ("grpc-", ":", "user-agent", "te", "content-type")


def control_address(run_dir: str) -> str:
    """Where the control process serves gRPC for its data-plane processes."""
    return f"unix:{run_dir}/grpc-control.sock"


def _metadata(context: grpc.aio.ServicerContext) -> tuple[tuple[str, Any], ...]:
    return tuple((k, v) for k, v in context.invocation_metadata() or ()
                 if not k.lower().startswith(_HOP_HEADERS))


class DataPlaneHandlers(Handlers):
    def __init__(self, portal: Portal, service: Service, plane: DataPlane, control: str,
                 max_message_bytes: int) -> None:
        super().__init__(portal, service)
        self._plane = plane
        self._control_address = control
        self._max_message_bytes = max_message_bytes
        self._channel: grpc.aio.Channel | None = None
        self._streams: set[Any] = set()  # forwarded streams open now

    def _control(self) -> grpc.aio.Channel:
        """The channel to the control process (made on the asyncio thread, on first use)."""
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self._control_address, options=[
                ("grpc.max_send_message_length", self._max_message_bytes),
                ("grpc.max_receive_message_length", -1),
            ])
        return self._channel

    def forward(self, name: str) -> Unary:
        method = f"/{SERVICE.full_name}/{name}"

        async def handler(request: bytes, context: grpc.aio.ServicerContext) -> Any:
            call = self._control().unary_unary(method)
            try:
                return await call(request, metadata=_metadata(context),
                                  timeout=context.time_remaining())
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details() or "",
                                    exc.trailing_metadata() or ())

        return handler

    async def forward_stream(self, requests: AsyncIterator[bytes],
                             context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        method = f"/{SERVICE.full_name}/ModelStreamInfer"
        if self.closing:
            await abort(context, Unavailable(SHUTTING_DOWN))
        call = self._control().stream_stream(method)(requests, metadata=_metadata(context))
        self._streams.add(call)
        try:
            async for answer in call:
                yield answer
        except (grpc.aio.AioRpcError, asyncio.CancelledError) as exc:
            if self.closing:  # this process is stopping: say so, as the control process would
                await abort(context, Unavailable(SHUTTING_DOWN))
            if isinstance(exc, asyncio.CancelledError):
                raise
            await context.abort(exc.code(), exc.details() or "", exc.trailing_metadata() or ())
        finally:
            self._streams.discard(call)

    def close(self) -> None:
        """Shutdown begins: forwarded streams end now, with UNAVAILABLE (shutting down)."""
        super().close()
        for call in list(self._streams):
            call.cancel()

    async def model_infer(self, wire: WireRequest, context: grpc.aio.ServicerContext) -> Any:
        header = wire.header
        if wire.error or self._plane.serves_here(header.model_name,
                                                 header.model_version or None):
            return await super().model_infer(wire, context)
        return await self.forward("ModelInfer")(wire.data, context)

    def generic_handler(self) -> grpc.GenericRpcHandler:
        methods = {
            m.name: grpc.unary_unary_rpc_method_handler(self.forward(m.name))
            for m in SERVICE.methods if m.name not in ("ModelInfer", "ModelStreamInfer")
        }
        methods["ModelInfer"] = grpc.unary_unary_rpc_method_handler(
            self.model_infer, request_deserializer=codec.split_request,
            response_serializer=lambda m: m if isinstance(m, bytes) else m.SerializeToString())
        methods["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
            self.forward_stream)
        return grpc.method_handlers_generic_handler(SERVICE.full_name, methods)
