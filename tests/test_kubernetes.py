"""deploy/kubernetes, rendered by a real kustomize (``kubectl kustomize``; offline) and every
object validated against the Kubernetes OpenAPI schemas of a current release
(``kubernetes-validate``, which ships them: no network). No apiserver runs here: what is
checked is what an apiserver would check at ``kubectl apply --dry-run=server`` for schema, plus
what Inferoxy needs of the Pod (the gateway's and the copies' flags parse, the volumes are
shared, every model has a copy container)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.declaration import load_declarations
from inferoxy.cli import build_parser
from tests.conftest import ROOT
from worker.attach import parse_args as worker_args

DEPLOY = ROOT / "deploy" / "kubernetes"
K8S_VERSION = "1.37.0"  # the newest release kubernetes-validate ships schemas for (>= 1.37)
GATEWAY = {"app.kubernetes.io/name": "inferoxy", "app.kubernetes.io/component": "gateway"}


def kubectl() -> str:
    binary = shutil.which("kubectl")
    if binary is None:
        pytest.fail("kubectl is not installed (its kustomize renders deploy/kubernetes): "
                    "apt-get install -y kubernetes-client", pytrace=False)
    return binary


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    done = subprocess.run([kubectl(), "kustomize", str(DEPLOY)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return [o for o in yaml.safe_load_all(done.stdout) if o]


def one(objects: list[dict[str, Any]], kind: str, name: str = "inferoxy") -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name, [(o["kind"], o["metadata"]["name"]) for o in objects])
    return found[0]


def test_every_object_is_valid_for_a_current_release(objects: list[dict[str, Any]]) -> None:
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == ["ConfigMap", "DaemonSet", "Deployment", "Namespace",
                     "PodDisruptionBudget", "Service", "Service"]
    for obj in objects:
        # strict: a field the schema does not know (a typo) fails too
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "inferoxy"


def test_the_validator_catches_a_broken_object(objects: list[dict[str, Any]]) -> None:
    """The check above can fail: a misspelt field and a wrong type are refused."""
    daemonset = one(objects, "DaemonSet")
    broken = yaml.safe_load(yaml.safe_dump(daemonset))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    broken = yaml.safe_load(yaml.safe_dump(daemonset))
    broken["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "long"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def _mounts(container: dict[str, Any]) -> dict[str, str]:
    return {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}


def test_the_pod_is_a_gateway_with_its_copies(objects: list[dict[str, Any]]) -> None:
    pod = one(objects, "DaemonSet")["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    gateway = containers.pop("gateway")
    serve = build_parser().parse_args(gateway["args"])  # flags this release understands
    assert serve.runtime == "attach" and serve.drain_grace_s > 0
    assert {e["name"]: e["value"] for e in gateway["env"]}["INFEROXY_GPUS"] == ""
    # /dev/shm: one memory-backed emptyDir for every container; the socket directory too.
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert _mounts(gateway)["/dev/shm"] == "dshm"
    assert _mounts(gateway)[serve.run_dir] == "sockets"
    # models.yaml comes from the ConfigMap kustomize generated from deploy/kubernetes.
    config = volumes[_mounts(gateway)[str(Path(serve.models).parent)]]["configMap"]["name"]
    data = one(objects, "ConfigMap", config)["data"]
    assert data[Path(serve.models).name] == (DEPLOY / "models.yaml").read_text()
    models = load_declarations(str(DEPLOY / "models.yaml"))
    # One copy container per model; a GPU model's asks for one GPU.
    served = {}
    for name, container in containers.items():
        copy = worker_args(container["args"][1:])
        assert container["args"][0] == "worker" and copy.run_dir == serve.run_dir, name
        assert _mounts(container) == {"/dev/shm": "dshm", serve.run_dir: "sockets"}, name
        gpus = container["resources"].get("limits", {}).get("nvidia.com/gpu")
        config_of = models[copy.model].versions[models[copy.model].latest]
        assert gpus == (1 if config_of.run_on_gpu else None), name
        served[copy.model] = name
    assert sorted(served) == sorted(models)
    # Probes on the v2 health endpoints, by port name.
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert ports["http"] == serve.http_port and ports["metrics"] == serve.metrics_port
    # Long enough for the grace, the drain and the copies' stop.
    assert pod["terminationGracePeriodSeconds"] >= serve.drain_grace_s + serve.drain_timeout_s


def test_service_pdb_and_registry_select_what_runs(objects: list[dict[str, Any]]) -> None:
    daemonset = one(objects, "DaemonSet")
    labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert daemonset["spec"]["selector"]["matchLabels"] == GATEWAY and GATEWAY.items() <= \
        labels.items()
    service = one(objects, "Service")
    assert service["spec"]["selector"] == GATEWAY
    ports = {p["name"] for p in daemonset["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    assert "metrics" in {p["name"] for p in service["spec"]["ports"]}  # ServiceMonitor-ready
    assert one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == GATEWAY
    # The gateways' --redis names the registry's Service.
    serve = build_parser().parse_args(daemonset["spec"]["template"]["spec"]["containers"][0]
                                      ["args"])
    redis = one(objects, "Service", "inferoxy-redis")
    assert serve.redis == f"redis://inferoxy-redis:{redis['spec']['ports'][0]['port']}/0"
    monitor = yaml.safe_load((DEPLOY / "optional" / "servicemonitor.yaml").read_text())
    assert monitor["spec"]["selector"]["matchLabels"] == GATEWAY
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
