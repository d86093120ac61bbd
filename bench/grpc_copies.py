"""What the gRPC bridge's tensor copies cost: protobuf's own (de)serializer against ours.

    python -m bench.grpc_copies [MiB]

Request side, from the bytes grpcio hands the deserializer to the tensor in its slot:

* ``protobuf``: ``ModelInferRequest.FromString`` (upb copies the bytes field into its arena),
  then ``raw_input_contents[0]`` (a new ``bytes`` on every access), then the copy into the
  slot;
* ``split``: ``bridges.grpc.codec.split_request`` locates the raw entry, protobuf parses only
  the small header, and the tensor is copied once, from the received bytes into the slot.

Response side, from the worker's output view to the bytes grpcio sends:

* ``protobuf``: ``bytes(view)`` into ``raw_output_contents``, then ``SerializeToString``;
* ``join``: ``bridges.grpc.codec.encode_response`` serializes the header and joins the
  output in (one copy).

The slot is a pre-touched anonymous mapping (warm pages, as a reused slab slot is).
"""

from __future__ import annotations

import mmap
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
from tritonclient.grpc import service_pb2 as pb

from bridges.grpc import codec


def _best(fn: Callable[[], object], repeat: int = 15) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3, statistics.median(times) * 1e3


def main() -> None:
    mib = float(sys.argv[1]) if len(sys.argv) > 1 else 19.0
    n = int(mib * (1 << 20)) // 4 * 4
    tensor = np.random.default_rng(0).integers(0, 255, n, dtype=np.uint8)
    request = pb.ModelInferRequest(model_name="stub", id="r1")
    inp = request.inputs.add(name="IMAGE", datatype="UINT8", shape=[1, n // 3 // 4, 4, 3])
    inp.parameters["x"].int64_param = 1
    request.raw_input_contents.append(tensor[: (n // 3 // 4) * 12].tobytes())
    data = request.SerializeToString()
    size = len(request.raw_input_contents[0])
    slot = mmap.mmap(-1, size)
    slot_view = memoryview(slot)
    slot_view[:] = b"\x01" * size  # warm

    def proto_in() -> None:
        msg = pb.ModelInferRequest.FromString(data)
        slot_view[:] = msg.raw_input_contents[0]

    def split_in() -> None:
        wire = codec.split_request(data)
        slot_view[:] = wire.raw(0)

    def memcpy() -> None:
        slot_view[:] = memoryview(data)[: size]

    output = np.frombuffer(slot, dtype=np.uint8)
    outputs = (codec.OutputRequest("IMAGE"),)

    def proto_out() -> None:
        response = pb.ModelInferResponse(model_name="stub", model_version="1", id="r1")
        response.outputs.add(name="IMAGE", datatype="UINT8", shape=[1, size])
        response.raw_output_contents.append(bytes(output.data))
        response.SerializeToString()

    def join_out() -> None:
        codec.encode_response("stub", "1", "r1", outputs, {"IMAGE": output[None]},
                              {"IMAGE": "UINT8"})

    print(f"tensor {size / (1 << 20):.1f} MiB; best / median of 15, ms")
    for label, fn in (
        ("one memcpy (the floor)", memcpy),
        ("request: protobuf parse + copy into slot", proto_in),
        ("request: split_request + copy into slot", split_in),
        ("response: protobuf (bytes + serialize)", proto_out),
        ("response: encode_response (one join)", join_out),
    ):
        best, median = _best(fn)
        print(f"  {label:44s} {best:8.3f} / {median:8.3f}")


if __name__ == "__main__":
    main()
