"""The ``inference.GRPCInferenceService`` RPCs, as the Trio thread runs them.

Each method takes the request message and returns the response (a message, or for infer
the serialized bytes), or raises an ``InferoxyError`` whose ``grpc_code`` the bridge
answers with. They run on the Trio thread (``bridges.grpc.portal``), so they may read and
change the gateway freely; the plain ones must not block, the async ones are tasks.
"""

from __future__ import annotations

from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb

from bridges.auth import bearer_ok
from bridges.grpc import codec
from bridges.grpc.codec import WireRequest
from gateway.admission import Admission, output_datatypes, region_error
from gateway.core import Gateway
from gateway.errors import InferoxyError, InvalidArgument, NotFound
from gateway.metadata import model_config, model_metadata
from shm.regions import Region, RegionError

M = TypeVar("M", bound=Message)


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
        if request.parameters:
            raise InvalidArgument(
                "loading a model with a new configuration or files is not supported; "
                "declare the model in models.yaml and load it by name"
            )
        await self.gateway.load_model(request.model_name)
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

    # -- inference -----------------------------------------------------------------------------

    async def infer(self, wire: WireRequest, stream: bool = False) -> bytes:
        """One infer request, from the received bytes to the serialized response; counted in
        ``inferoxy_bridge_responses_total`` by the HTTP status its gRPC code stands for."""
        answers = self.gateway.bridge_answers
        try:
            response = await self._infer(wire, stream)
        except InferoxyError as exc:
            answers.answered("grpc", exc.http_status)
            raise
        except BaseException:
            answers.answered("grpc", 500)  # cancelled (shutdown) or a bug: still an answer
            raise
        answers.answered("grpc", 200)
        return response

    async def _infer(self, wire: WireRequest, stream: bool) -> bytes:
        gateway = self.gateway
        if wire.error:
            raise InvalidArgument(wire.error)
        header = wire.header
        server = gateway.model(header.model_name, header.model_version or None)
        gateway.ensure_accepting(server)
        config = server.config
        parsed = codec.parse_request(wire, config, gateway.limits)
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
                else:
                    slot = admission.slot(checked)
                    codec.write_contents(tensor, slot.view(checked.dtype.name, checked.shape))
            wire.drop_data()
            for o in parsed.outputs:
                if o.region is not None:
                    spec = config.output(o.name)
                    assert spec is not None
                    admission.region_output(spec, o.region.name, o.region.offset,
                                            o.region.byte_size)
            result = await admission.run(
                parsed.rows, parsed.parameters, parsed.timeout_us, parsed.request_id
            )
        finally:
            admission.release()  # no-op once submitted
        try:
            return codec.encode_response(
                config.name, config.version, parsed.request_id, parsed.outputs,
                result.outputs, output_datatypes(config), result.in_regions, stream=stream,
            )
        finally:
            result.release()
