"""The ``inference.GRPCInferenceService`` RPCs, as the Trio thread runs them.

Each method takes the request message and returns the response (a message, or for infer
the serialized bytes), or raises an ``InferoxyError`` whose ``grpc_code`` the bridge
answers with. They run on the Trio thread (``bridges.grpc.portal``), so they may read and
change the gateway freely; the plain ones must not block, the async ones are tasks. ``infer``
answers through a callback (``Portal.call``), so a request costs no Trio task.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb

from bridges.auth import bearer_ok
from bridges.grpc import codec
from bridges.grpc.codec import OutputRequest, WireRequest
from bridges.grpc.portal import INTERNAL, InternalError, Reply
from gateway.admission import CUDA_SHM_REFUSED, Admission, output_datatypes, region_error
from gateway.core import Gateway
from gateway.errors import InferoxyError, InvalidArgument, NotFound, Unsupported
from gateway.inflight import InFlight, InFlightDeadlines
from gateway.metadata import model_config, model_metadata
from gateway.model_server import ModelServer
from gateway.request import InferRequest, RequestResult
from shm.regions import Region, RegionError

M = TypeVar("M", bound=Message)

log = logging.getLogger("inferoxy.grpc")


class Status(InferoxyError):
    """An error with a gRPC status of its own (one the core has no type for)."""

    def __init__(self, grpc_code: str, message: str) -> None:
        super().__init__(message)
        self.grpc_code = grpc_code


def _parse(doc: dict[str, Any], message: M) -> M:
    """A message from the JSON form the HTTP bridge answers with (fields it lacks: ignored)."""
    return json_format.ParseDict(doc, message, ignore_unknown_fields=True)


def unimplemented(what: str) -> Status:
    return Status("UNIMPLEMENTED", f"{what} is not supported by this server")


class Service:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._deadlines = InFlightDeadlines()

    # -- health and metadata -----------------------------------------------------------------

    def server_live(self, request: pb.ServerLiveRequest) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.gateway.live)

    def server_ready(self, request: pb.ServerReadyRequest) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.gateway.ready)

    def model_ready(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        try:
            server = self.gateway.model(request.name, request.version or None)
        except NotFound:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=server.ready and not self.gateway.draining)

    def server_metadata(self, request: pb.ServerMetadataRequest) -> pb.ServerMetadataResponse:
        return _parse(self.gateway.server_metadata(), pb.ServerMetadataResponse())

    def model_metadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        server = self.gateway.model(request.name, request.version or None)
        return _parse(model_metadata(server), pb.ModelMetadataResponse())

    def model_config(self, request: pb.ModelConfigRequest) -> pb.ModelConfigResponse:
        server = self.gateway.model(request.name, request.version or None)
        doc = {k: v for k, v in model_config(server).items() if v is not None}
        return pb.ModelConfigResponse(config=_parse(doc, mc.ModelConfig()))

    async def model_statistics_fresh(self, request: pb.ModelStatisticsRequest
                                     ) -> pb.ModelStatisticsResponse:
        """The statistics with what every data-plane process counted until now."""
        await self.gateway.stats_fresh()
        return self.model_statistics(request)

    def model_statistics(self, request: pb.ModelStatisticsRequest
                         ) -> pb.ModelStatisticsResponse:
        if request.version:
            servers = [self.gateway.model(request.name, request.version)]
        elif request.name:  # every version of the model, as Triton answers
            self.gateway.model(request.name)
            servers = [s for s in self.gateway.servers.values()
                       if s.config.name == request.name]
        else:
            servers = list(self.gateway.servers.values())
        return _parse(
            {"model_stats": [s.stats.to_json(s.config.name, s.config.version) for s in servers]},
            pb.ModelStatisticsResponse(),
        )

    # -- the model repository ------------------------------------------------------------------
    # Management: with --admin-token set, these need "authorization: Bearer <token>" metadata.

    def _require_admin(self, authorization: str | None) -> None:
        if not bearer_ok(getattr(self.gateway.settings, "admin_token", None), authorization):
            raise Status("UNAUTHENTICATED",
                         "this RPC needs 'authorization: Bearer <admin token>' metadata")

    def repository_index(self, request: pb.RepositoryIndexRequest, authorization: str | None
                         ) -> pb.RepositoryIndexResponse:
        self._require_admin(authorization)
        models = [m for m in self.gateway.repository_index()
                  if not request.ready or m["state"] == "READY"]
        return pb.RepositoryIndexResponse(models=[
            pb.RepositoryIndexResponse.ModelIndex(
                name=m["name"], version=m["version"], state=m["state"], reason=m["reason"])
            for m in models
        ])

    async def repository_model_load(self, request: pb.RepositoryModelLoadRequest,
                                    authorization: str | None
                                    ) -> pb.RepositoryModelLoadResponse:
        self._require_admin(authorization)
        await self.gateway.load_model(request.model_name, codec.parameters(request.parameters))
        return pb.RepositoryModelLoadResponse()

    async def repository_model_unload(self, request: pb.RepositoryModelUnloadRequest,
                                      authorization: str | None
                                      ) -> pb.RepositoryModelUnloadResponse:
        self._require_admin(authorization)
        await self.gateway.unload_model(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # -- system shared memory ------------------------------------------------------------------

    def shm_register(self, request: pb.SystemSharedMemoryRegisterRequest
                     ) -> pb.SystemSharedMemoryRegisterResponse:
        try:
            self.gateway.regions.register(request.name, request.key, request.offset,
                                          request.byte_size)
        except RegionError as exc:
            raise region_error(exc) from None
        return pb.SystemSharedMemoryRegisterResponse()

    async def shm_register_everywhere(self, request: pb.SystemSharedMemoryRegisterRequest
                                      ) -> pb.SystemSharedMemoryRegisterResponse:
        """Register, and answer once every data-plane process can use the region."""
        response = self.shm_register(request)
        await self.gateway.regions_published()
        return response

    async def shm_unregister_everywhere(self, request: pb.SystemSharedMemoryUnregisterRequest
                                        ) -> pb.SystemSharedMemoryUnregisterResponse:
        response = self.shm_unregister(request)
        await self.gateway.regions_published()
        return response

    def shm_status(self, request: pb.SystemSharedMemoryStatusRequest
                   ) -> pb.SystemSharedMemoryStatusResponse:
        try:
            regions: list[Region] = self.gateway.regions.status(request.name or None)
        except RegionError as exc:
            raise region_error(exc) from None
        response = pb.SystemSharedMemoryStatusResponse()
        for r in regions:
            response.regions[r.name].CopyFrom(pb.SystemSharedMemoryStatusResponse.RegionStatus(
                name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size,
            ))
        return response

    def shm_unregister(self, request: pb.SystemSharedMemoryUnregisterRequest
                       ) -> pb.SystemSharedMemoryUnregisterResponse:
        try:
            self.gateway.regions.unregister(request.name or None)
        except RegionError as exc:
            raise region_error(exc) from None
        return pb.SystemSharedMemoryUnregisterResponse()

    # -- CUDA shared memory: none here, answered as the HTTP bridge (and Triton without a GPU)
    # answer: nothing registered, nothing to unregister, and a registration refused. Clients
    # unregister everything at start and exit, before they ever use system shared memory.

    def cuda_shm_status(self, request: pb.CudaSharedMemoryStatusRequest
                        ) -> pb.CudaSharedMemoryStatusResponse:
        return pb.CudaSharedMemoryStatusResponse()

    def cuda_shm_register(self, request: pb.CudaSharedMemoryRegisterRequest
                          ) -> pb.CudaSharedMemoryRegisterResponse:
        raise InvalidArgument(CUDA_SHM_REFUSED)

    def cuda_shm_unregister(self, request: pb.CudaSharedMemoryUnregisterRequest
                            ) -> pb.CudaSharedMemoryUnregisterResponse:
        return pb.CudaSharedMemoryUnregisterResponse()

    # -- inference -----------------------------------------------------------------------------
    # No Trio task per request: ``infer`` admits and submits synchronously, the model server's
    # ``on_done`` callback encodes the answer, and one task (``run_deadlines``) keeps every
    # request's deadline in a heap — the way the control process serves data-plane processes.

    def infer(self, reply: Reply, wire: WireRequest, stream: bool = False
              ) -> Callable[[], None] | None:
        """Admit one infer request (``Portal.call``): ``reply(None, response bytes)`` or
        ``reply(error, None)`` follows once, from ``on_done``, the deadline task, or now (by
        raising); the function returned abandons it. Every request is counted once in
        ``inferoxy_bridge_responses_total`` by the HTTP status its gRPC code stands for."""
        try:
            call = self._submit(reply, wire, stream)
        except InferoxyError as exc:
            self.gateway.bridge_answers.answered("grpc", exc.http_status)
            raise
        except BaseException:
            self.gateway.bridge_answers.answered("grpc", 500)
            raise
        return call.cancel  # the client went away: abandon; no answer reaches anyone

    def _submit(self, reply: Reply, wire: WireRequest, stream: bool) -> _InferCall:
        gateway = self.gateway
        if wire.error:
            raise InvalidArgument(wire.error)
        header = wire.header
        server = gateway.model(header.model_name, header.model_version or None)
        gateway.ensure_accepting(server)
        config = server.config
        parsed = codec.parse_request(wire, config, gateway.limits)
        if config.decoupled:
            _check_decoupled(parsed, stream)
        admission: Admission = gateway.admission(server)
        try:
            for tensor in parsed.inputs:
                checked = tensor.checked
                if tensor.region is not None:
                    r = tensor.region
                    admission.region_input(checked, r.name, r.offset, r.byte_size)
                elif tensor.raw is not None:
                    # The one copy on the way in: from the received message into the slot.
                    admission.slot(checked).memory(checked.nbytes)[:] = wire.raw(tensor.raw)
                elif tensor.wire is not None:  # BYTES contents, in their wire form
                    admission.slot(checked).memory(checked.nbytes)[:] = tensor.wire
                else:
                    slot = admission.slot(checked)
                    codec.write_contents(tensor, slot.view(checked.dtype, checked.shape))
            wire.drop_data()
            for o in parsed.outputs:
                if o.region is not None:
                    spec = config.output(o.name)
                    assert spec is not None
                    admission.region_output(spec, o.region.name, o.region.offset,
                                            o.region.byte_size)
            request = admission.submit(
                parsed.rows, parsed.parameters, parsed.timeout_us, parsed.request_id
            )
        finally:
            admission.release()  # no-op once submitted
        call = _InferCall(self.gateway, server, request, reply, parsed.outputs, stream,
                          parsed.parameters.get(codec.EMPTY_FINAL) is True)
        self._deadlines.add(call)  # nothing is answered during submit
        return call

    async def run_deadlines(self) -> None:
        """The deadlines of every infer request in flight: one task, one heap."""
        await self._deadlines.run()

    def cancel_all(self) -> None:
        """The bridge stops: abandon every request still waiting (Trio thread)."""
        for call in self._deadlines.pending():
            call.cancel()


def _check_decoupled(parsed: codec.ParsedRequest, stream: bool) -> None:
    """A decoupled model answers on a stream only (Triton's wording), never into regions."""
    if not stream:
        raise Unsupported(codec.DECOUPLED_UNARY)
    if any(o.region is not None for o in parsed.outputs):
        raise InvalidArgument("a decoupled model's outputs cannot go to shared memory: each "
                              "response carries its own")


class _InferCall(InFlight):
    """One infer request in the core, until answered (``gateway.inflight``): its answer is
    encoded here and goes to ``reply``, counted once by the HTTP status its code stands for."""

    __slots__ = ("empty_final", "gateway", "model", "outputs", "reply", "stream")

    def __init__(self, gateway: Gateway, server: ModelServer, request: InferRequest,
                 reply: Reply, outputs: tuple[OutputRequest, ...], stream: bool,
                 empty_final: bool = False) -> None:
        super().__init__(server, request)
        self.gateway = gateway
        self.model = server
        self.reply = reply
        self.outputs = outputs
        self.stream = stream
        self.empty_final = empty_final  # decoupled: an empty last response flags the end

    def deliver(self, result: RequestResult | None, error: InferoxyError | None) -> None:
        response: bytes | list[bytes] | None = None
        if result is not None:
            try:
                response = self._encode(result)
            except Exception:
                log.exception("encoding a gRPC infer response failed")
                error = InternalError(INTERNAL)
            finally:
                result.release()
        else:
            assert error is not None
        self.gateway.bridge_answers.answered(
            "grpc", error.http_status if error is not None else 200)
        self.reply(error, response)

    def _encode(self, result: RequestResult) -> bytes | list[bytes]:
        config = self.model.config
        request = self.request
        if config.decoupled:
            return codec.encode_decoupled(
                config.name, config.version, request.request_id, self.outputs,
                result.outputs, output_datatypes(config), empty_final=self.empty_final,
                batched=config.batched)
        return codec.encode_response(
            config.name, config.version, request.request_id, self.outputs,
            result.outputs, output_datatypes(config), result.in_regions,
            stream=self.stream, batched=config.batched,
        )
