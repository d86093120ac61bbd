"""What every fuzz test checks after its run: the gateway still serves, nothing leaked."""

from __future__ import annotations

import time
import urllib.request

import numpy as np
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RunningGateway


def slots_in_use(gw: RunningGateway) -> float:
    with urllib.request.urlopen(f"{gw.metrics_url}/metrics", timeout=10) as r:
        text = r.read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "inferoxy_shm_slots_in_use":
            return float(family.samples[0].value)
    raise AssertionError("no inferoxy_shm_slots_in_use in /metrics")


def assert_no_leak(gw: RunningGateway, timeout_s: float = 15) -> None:
    """Every input slot is back once in-flight answers are out (bounded wait)."""
    deadline = time.monotonic() + timeout_s
    while (n := slots_in_use(gw)) != 0:
        assert time.monotonic() < deadline, f"{n} slot(s) still in use"
        time.sleep(0.05)


def assert_still_serving(gw: RunningGateway) -> None:
    client = httpclient.InferenceServerClient(gw.url)
    try:
        image = np.arange(12, dtype=np.uint8).reshape(1, 2, 2, 3)
        inp = httpclient.InferInput("IMAGE", list(image.shape), "UINT8")
        inp.set_data_from_numpy(image, binary_data=True)
        np.testing.assert_array_equal(client.infer("stub", [inp]).as_numpy("IMAGE"), image)
    finally:
        client.close()
