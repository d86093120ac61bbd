"""What typing the gateway <-> worker messages costs: CPU per message, in process.

    python -m bench.message_cost

Builds and encodes a BATCH of 1 and of 8 requests the way ``gateway.model_server`` does
(``shm.messages``), and the same body as a plain dict (what the gateway sent before the
messages had types), then decodes a RESULT and a BATCH both ways (the plain ways include the
``Descriptor.from_wire`` calls the server and the worker made later anyway). Prints CPU
microseconds per message, the best of several rounds; the ratio is what to read (shared
machines are noisy).
"""

from __future__ import annotations

import time
import timeit
from collections.abc import Callable

from shm import wire
from shm.descriptor import Descriptor
from shm.messages import (
    Batch,
    BatchItem,
    Result,
    Timing,
    decode_from_worker,
    decode_to_worker,
    encode,
)

X = Descriptor("ifx-1-0", 4096, "float32", (1, 16))
OUT = Descriptor("ifx-w1", 0, "float32", (8, 16))


def typed_batch(n: int) -> list[bytes]:
    return encode(Batch(1, [BatchItem("r", 1, {"X": X}) for _ in range(n)], {}, 8))


def _plain_item() -> dict[str, object]:
    return {"rid": "r", "rows": 1, "inputs": {"X": X.to_wire()}}


def plain_batch(n: int) -> list[bytes]:
    body = {"id": 1, "items": [_plain_item() for _ in range(n)], "parameters": {},
            "max_rows": 8}
    return wire.encode(wire.BATCH, body)


RESULT = encode(Result(3, 7, {"Y": OUT}, Timing(1, 2, 3)))


def typed_result() -> object:
    return decode_from_worker(RESULT)


def plain_result() -> object:
    _, body = wire.decode(RESULT)
    return {n: Descriptor.from_wire(d) for n, d in body["outputs"].items()}, body.get("timing")


def plain_batch_decode(frames: list[bytes]) -> object:
    """What the worker did before: decode, then each input's descriptor as it gathered."""
    _, body = wire.decode(frames)
    return [{n: Descriptor.from_wire(d) for n, d in item["inputs"].items()}
            for item in body["items"]]


def best_us(fn: Callable[[], object], number: int = 20_000) -> float:
    # CPU time, not wall time: a descheduled round (a busy shared machine) does not count
    return min(timeit.repeat(fn, number=number, repeat=7, timer=time.process_time)) / number * 1e6


def main() -> None:
    batch8 = typed_batch(8)
    rows = [
        ("BATCH of 1, build + encode", best_us(lambda: plain_batch(1)),
         best_us(lambda: typed_batch(1))),
        ("BATCH of 8, build + encode", best_us(lambda: plain_batch(8)),
         best_us(lambda: typed_batch(8))),
        ("RESULT, decode", best_us(plain_result), best_us(typed_result)),
        ("BATCH of 8, decode (worker)", best_us(lambda: plain_batch_decode(batch8)),
         best_us(lambda: decode_to_worker(batch8))),
    ]
    print(f"{'message':32} {'plain µs':>9} {'typed µs':>9} {'ratio':>6}")
    for name, plain, typed in rows:
        print(f"{name:32} {plain:9.2f} {typed:9.2f} {typed / plain:6.2f}")


if __name__ == "__main__":
    main()
