"""The REST API fuzzed from its own OpenAPI document (bridges/rest/openapi.yaml), schemathesis.

Every operation of the document gets generated requests (valid and invalid ones) against a
real gateway; each answer must be a documented status with a body that conforms to the
document. A 5xx is allowed only where it is documented and means what the document says:
503 (not ready / overloaded) and 504 (deadline); the models here never raise, so a 500 is a
crash. Requests are steered to the gateway's real models part of the time, else nearly every
infer would be a 404. After the run the gateway still answers and no slot is leaked.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import ROOT, RunningGateway, shm_names, start_gateway
from tests.fuzzing import assert_no_leak, assert_still_serving

SCHEMA = schemathesis.openapi.from_path(ROOT / "bridges" / "rest" / "openapi.yaml")
MODELS = ROOT / "tests" / "models_limits.yaml"
TOKEN = "fuzz-token"
REAL_MODELS = ("stub", "echo", "running_sum")
STEERED = {"modelMetadata", "modelVersionMetadata", "modelReady", "modelVersionReady",
           "modelConfig", "modelVersionConfig", "modelStatistics", "modelVersionStatistics",
           "modelInfer", "modelVersionInfer"}  # never load/unload: they would stop models


@pytest.fixture(scope="module")
def fgw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    gw = start_gateway(tmp_path_factory.mktemp("fuzz-rest"), MODELS, "--allow-client-shm",
                       "--admin-token", TOKEN, "--max-body-bytes", str(4 << 20))
    try:
        yield gw
        assert_still_serving(gw)
        assert_no_leak(gw)
        assert gw.stop() == 0, gw.log()
        assert shm_names(gw.shm_prefix) == []
        assert "Traceback" not in gw.log(), gw.log()
    finally:
        gw.cleanup()


def _steer(case: Any) -> None:
    """Half of the generated requests name a real model (and its one version)."""
    if case.operation.definition.raw.get("operationId") not in STEERED:
        return
    pick = random.Random(repr((case.path_parameters, case.body))).random()
    if pick < 0.5:
        case.path_parameters["model_name"] = REAL_MODELS[int(pick * 6)]
        if "model_version" in case.path_parameters and pick < 0.4:
            case.path_parameters["model_version"] = "1"


@SCHEMA.parametrize()
@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_rest_api_from_its_openapi_document(case: Any, fgw: RunningGateway) -> None:
    _steer(case)
    response = case.call(base_url=fgw.http, headers={"Authorization": f"Bearer {TOKEN}"},
                         timeout=30)
    case.validate_response(response, checks=[
        status_code_conformance, response_schema_conformance, content_type_conformance,
    ])
    assert response.status_code not in (500, 501, 502), (response.status_code, response.text)


# -- crashes the fuzzer found, kept ------------------------------------------------------------


@pytest.mark.parametrize("path", [
    "/v2/systemsharedmemory/region/r1/register",  # was a 500 (UnicodeDecodeError)
    "/v2/repository/index",
])
def test_body_that_is_not_utf8(fgw: RunningGateway, path: str) -> None:
    import urllib3

    r = urllib3.request("POST", f"{fgw.http}{path}", body=b"\xff\xfeWn&T", timeout=10,
                        headers={"Content-Type": "application/json",
                                 "Authorization": f"Bearer {TOKEN}"})
    assert r.status in (200, 400), r.data  # index: no filter asked; register: 400
    assert r.status == 200 or b"error" in r.data


def test_admin_body_that_is_not_utf8(fgw: RunningGateway) -> None:
    import urllib3

    r = urllib3.request("PUT", f"{fgw.admin_url}/v2/admin/models/x", body=b"\xff\xfe{",
                        headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert r.status == 400, r.data
    assert b"JSON object" in r.data


def test_openapi_document_is_well_formed() -> None:
    """Every operation's every response has a description (YAML flow maps with a comma once
    split one in two), every path is served, and every $ref resolves."""
    import yaml

    doc = yaml.safe_load((ROOT / "bridges" / "rest" / "openapi.yaml").read_text())
    assert doc["openapi"].startswith("3.0")

    def resolve(node: Any) -> Any:
        if isinstance(node, dict) and "$ref" in node:
            target: Any = doc
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return resolve(target)
        return node

    for path, item in doc["paths"].items():
        assert path.startswith("/v2"), path
        for method, op in item.items():
            if method == "parameters":
                continue
            assert op["operationId"] and op["responses"], (path, method)
            for status, response in op["responses"].items():
                response = resolve(response)
                assert set(response) <= {"description", "content", "headers"}, (path, status)
                assert isinstance(response["description"], str), (path, status)
