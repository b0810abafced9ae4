"""Every YAML under cluster/: says how to run it, launcher configs validate against the
schema inside Ray, KubeRay manifests have the structure a GPU sweep needs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "cluster").glob("*.yaml"))
LAUNCHER = [p for p in CONFIGS if not p.name.startswith("kuberay")]
KUBERAY = [p for p in CONFIGS if p.name.startswith("kuberay")]


def test_there_are_launcher_and_kuberay_configs():
    assert {p.name for p in CONFIGS} >= {"aws-gpu-cluster.yaml", "single-machine.yaml",
                                         "kuberay-raycluster.yaml", "kuberay-rayjob.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_starts_with_the_command_that_uses_it(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("#") and (f"cluster/{path.name}" in first)


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_launcher_config_validates_against_rays_schema(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(path.read_text())
    validate_config(prepare_config(config))  # what `ray up` does: fill defaults, then the schema
    starts = " ".join(config.get("head_start_ray_commands", []) + config.get("worker_start_ray_commands", []))
    assert "RAY_AUTH_MODE=token" in starts  # token auth on
    assert "--dashboard-host=127.0.0.1" in starts  # dashboard not exposed


def test_schema_validation_catches_a_typo():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster" / "aws-gpu-cluster.yaml").read_text())
    config["max_worker"] = config.pop("max_workers")
    with pytest.raises(Exception, match="max_worker"):
        validate_config(prepare_config(config))


def _pods(doc: dict) -> list[dict]:
    spec = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
    return [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_manifest_structure(path):
    doc = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] in ("RayCluster", "RayJob")
    spec = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
    assert spec["rayVersion"].startswith("2.60")
    gpu_groups = [g for g in spec["workerGroupSpecs"]
                  if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    assert gpu_groups, "a GPU worker group"
    for pod in _pods(doc):
        container = pod["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]  # the token never sits in the manifest
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/mnt/shared" in mounts  # shared storage on every pod
        claims = {v["name"]: v for v in pod["volumes"]}
        assert "persistentVolumeClaim" in claims["shared"]
    if doc["kind"] == "RayJob":
        entry = doc["spec"]["entrypoint"]
        assert entry.startswith("raytune-opt run search_spaces/") and "--storage /mnt/shared" in entry
        spec_file = entry.split()[2]
        assert (ROOT / spec_file).is_file()
