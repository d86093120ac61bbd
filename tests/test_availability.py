"""Whether a model's server takes a request, read from its copies (``gateway.availability``)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from gateway import availability
from gateway.config import parse_model
from gateway.model_server import ModelServer
from shm.segment import SegmentCache
from shm.slab import SlabAllocator
from supervisor.copy import Copy
from supervisor.lifecycle import CopyState
from supervisor.placement import CPU


@pytest.fixture
def server() -> Iterator[ModelServer]:
    config = parse_model("m", {
        "entrypoint": "examples.models.stub:Identity",
        "inputs": [{"name": "X", "datatype": "FP32", "shape": [2]}],
        "outputs": [{"name": "Y", "datatype": "FP32", "shape": [2]}],
    })
    slab = SlabAllocator(f"ifxa-{os.getpid()}", limit_bytes=1 << 16, segment_bytes=1 << 16)
    yield ModelServer(config, lambda copy_id, kind, body: True, slab, SegmentCache())
    slab.close()


def copy(n: int, state: CopyState, *, error: str = "", loop: str = "") -> Copy:
    return Copy(n, "m", CPU, state=state, last_error=error, crash_loop=loop)


def test_a_ready_copy_admits(server: ModelServer) -> None:
    server.copies += [copy(1, CopyState.STOPPED, error="boom"), copy(2, CopyState.READY)]
    assert availability.refusal(server) is None
    assert not availability.failed(server)


def test_a_starting_copy_admits_the_request_waits_for_it(server: ModelServer) -> None:
    server.copies.append(copy(1, CopyState.STARTING))
    assert availability.refusal(server) is None


def test_copies_that_failed_to_load_refuse_with_the_reason(server: ModelServer) -> None:
    server.copies += [copy(1, CopyState.STOPPED, error="no module named x"),
                      copy(2, CopyState.STARTING, error="no module named x")]
    assert availability.refusal(server) == ("model 'm' is not ready "
                                            "(last error: no module named x)")
    assert availability.failed(server)
    assert availability.loading_reason(server, lambda image: "pulling") == "no module named x"


def test_every_copy_in_a_crash_loop_makes_the_model_unavailable(server: ModelServer) -> None:
    server.copies += [copy(1, CopyState.READY, loop="crash loop: 5 exits"),
                      copy(2, CopyState.STARTING, loop="crash loop: 6 exits")]
    assert availability.unavailable_reason(server) == "crash loop: 5 exits"
    assert availability.refusal(server) == "model 'm' is unavailable: crash loop: 5 exits"
    server.copies[1].crash_loop = ""  # one copy out of its loop: it may serve soon
    assert availability.unavailable_reason(server) == ""
    assert availability.refusal(server) is None


def test_no_copy_at_all_is_refused_and_not_failed(server: ModelServer) -> None:
    assert availability.refusal(server) == "model 'm' is not ready"
    assert not availability.failed(server)
    assert availability.loading_reason(server, lambda image: "pulling 40%") == "pulling 40%"
