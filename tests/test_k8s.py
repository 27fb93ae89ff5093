"""deploy/k8s/: kustomize renders the base and the example overlay, the Kubernetes API schemas accept
every object (kubernetes-validate --strict, offline), and the objects fit together and harden the pod."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from service.config import Settings

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
KUBECTL = shutil.which("kubectl")
OVERLAYS = ["base", "overlays/plant"]
# The newest schema version the installed kubernetes-validate ships.
K8S_VERSION = kubernetes_validate.latest_version()

pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl not installed (.ci/run installs it)")


def render(where: str) -> list[dict]:
    assert KUBECTL is not None
    done = subprocess.run(
        [KUBECTL, "kustomize", str(K8S / where)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def one(objects: list[dict], kind: str) -> dict:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


@pytest.mark.parametrize("where", OVERLAYS)
def test_every_object_validates_strictly_against_the_api_schemas(where: str) -> None:
    objects = render(where)
    assert {o["kind"] for o in objects} >= {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
    }
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_strict_validation_refuses_a_misspelt_field() -> None:
    deployment = one(render("base"), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.parametrize("where", OVERLAYS)
def test_the_pod_is_hardened_probed_and_sized(where: str) -> None:
    objects = render(where)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"] and "add" not in security["capabilities"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) and {"cpu", "memory"} <= set(
        container["resources"]["limits"]
    )
    env = {e["name"]: e for e in container["env"]}
    assert env["ASD_WORKERS"]["value"] == "1", "one worker per pod: Kubernetes scales pods"
    assert env["ASD_ORT_THREADS"]["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"
    assert env["ASD_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "asd-api-key"
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]), "a read-only root needs a /tmp"


@pytest.mark.parametrize("where", OVERLAYS)
def test_the_objects_refer_to_each_other(where: str) -> None:
    objects = render(where)
    deployment = one(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    for kind in ("Service", "PodDisruptionBudget"):
        obj = one(objects, kind)
        selector = obj["spec"]["selector"].get("matchLabels", obj["spec"]["selector"])
        assert selector.items() <= pod_labels.items(), kind
    hpa = one(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    config = one(objects, "ConfigMap")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert [s["configMapRef"]["name"] for s in container["envFrom"]] == [config["metadata"]["name"]]
    namespaces = {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"}
    assert len(namespaces) == 1, namespaces


def test_every_setting_named_is_one_the_service_has() -> None:
    fields = {f"ASD_{name.upper()}" for name in Settings.model_fields}
    for where in OVERLAYS:
        objects = render(where)
        (container,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
        names = set(one(objects, "ConfigMap")["data"]) | {e["name"] for e in container["env"]}
        assert names <= fields, sorted(names - fields)


def test_the_plant_overlay_mounts_its_models_read_only_where_the_service_reads_them() -> None:
    objects = render("overlays/plant")
    models_dir = one(objects, "ConfigMap")["data"]["ASD_MODELS_DIR"]
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == models_dir]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert claim in {o["metadata"]["name"] for o in objects if o["kind"] == "PersistentVolumeClaim"}
    assert container["image"].startswith("registry.plant.example/")


def test_the_archive_job_runs_one_shard_per_completion_index() -> None:
    job = yaml.safe_load((K8S / "score-job.yaml").read_text(encoding="utf-8"))
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    (container,) = spec["template"]["spec"]["containers"]
    args = container["args"]
    shard = args[args.index("--shard") + 1]
    assert shard == f"$(JOB_COMPLETION_INDEX)/{spec['completions']}", "N must equal completions"
    assert "$(JOB_COMPLETION_INDEX)" in args[args.index("--out") + 1], "each shard its own CSV"
    env = {e["name"]: e for e in container["env"]}
    assert "job-completion-index" in env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert container["command"] == ["asd-score"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert scripts["asd-score"] == "service.archive:main", "the service image has the command"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
