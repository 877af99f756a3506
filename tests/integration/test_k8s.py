"""deploy/k8s applied to a real Kubernetes control plane (`make k8s-check`).

deploy/local/k8s.sh starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok
on free loopback ports under a temporary data directory. The operators' CRDs come from their own
artifacts (k8s.sh crds: KEDA's Go module, Strimzi's api jar). Each overlay is applied with
strict field validation, first as a server-side dry run, then for real. The Deployments must
become Available and the migrate Job must complete. kwok plays the node's kubelet, so nothing
runs: this proves that the API server accepts the manifests, that the controllers make pods of
them, and that the scheduler places those pods. It does not prove that Herald works in them.

The Altinity ClickHouse operator's CRD is not served by any registry reachable here, so a
stand-in (CHI_STAND_IN) lets the API server accept the ClickHouseInstallation without checking
its fields.
"""

import base64
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import k8s
from tests.stack import free_ports

NAMESPACE = "herald"
TIMEOUT_S = 300  # generous: a loaded 2-core machine, several helpers at once
CHI_STAND_IN = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "clickhouseinstallations.clickhouse.altinity.com"},
    "spec": {
        "group": "clickhouse.altinity.com",
        "scope": "Namespaced",
        "names": {"kind": "ClickHouseInstallation", "listKind": "ClickHouseInstallationList",
                  "plural": "clickhouseinstallations", "singular": "clickhouseinstallation"},
        "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
            "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}],
    },
}


@dataclass
class Cluster:
    kubectl: str
    kubeconfig: str
    manifests: Path

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.kubectl, "--kubeconfig", self.kubeconfig, *args], input=stdin,
                              capture_output=True, text=True, timeout=TIMEOUT_S + 60)

    def ok(self, *args: str, stdin: str | None = None) -> str:
        result = self.run(*args, stdin=stdin)
        assert result.returncode == 0, f"kubectl {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def wait(self, *args: str) -> None:
        """`kubectl wait`, again until it succeeds: it fails outright on an object without status yet."""
        deadline = time.monotonic() + TIMEOUT_S
        while (result := self.run("wait", "--timeout=30s", *args)).returncode != 0:
            assert time.monotonic() < deadline, f"kubectl wait {' '.join(args)}:\n{result.stderr}"
            time.sleep(2)

    def get(self, *args: str) -> dict:
        return json.loads(self.ok("get", "-o", "json", *args))


def script(env: dict[str, str], command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(k8s.SCRIPT), command], env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tools = k8s.toolchain()
    binaries = Path(tools["HERALD_K8S_BIN"])
    crds = [Path(d) for d in tools["HERALD_K8S_CRDS"].split()]
    if not (binaries / "kube-apiserver").exists() or not all(d.is_dir() for d in crds):
        k8s.missing(f"no Kubernetes binaries or CRDs in {binaries.parent}: `make k8s-check` builds them "
                    "(deploy/local/k8s.sh build, 11-25 min cold) and makes the CRDs (deploy/local/k8s.sh crds)")
    data_dir = tmp_path_factory.mktemp("k8s-data")
    ports = free_ports(6)
    names = ("API", "ETCD", "ETCD_PEER", "CONTROLLER_MANAGER", "SCHEDULER", "KWOK")
    env = {**os.environ, "HERALD_DATA_DIR": str(data_dir),
           **{f"HERALD_K8S_{name}_PORT": str(port) for name, port in zip(names, ports)}}
    kubeconfig = k8s.toolchain(env)["KUBECONFIG"]
    started = script(env, "start")
    try:
        assert started.returncode == 0, f"deploy/local/k8s.sh start:\n{started.stderr}"
        cluster = Cluster(str(binaries / "kubectl"), kubeconfig,
                          k8s.manifests(tmp_path_factory.mktemp("manifests"), k8s.filled_secrets()))
        # The CRDs are larger than the last-applied annotation allows: server-side apply.
        for directory in crds:
            cluster.ok("apply", "--server-side", "-f", str(directory))
        cluster.ok("apply", "--server-side", "-f", "-", stdin=json.dumps(CHI_STAND_IN))
        cluster.wait("--for=condition=Established", "crd", "--all")
        yield cluster
    finally:
        stopped = script(env, "stop")
        assert stopped.returncode == 0, stopped.stderr


def apply_and_wait(cluster: Cluster, overlay: str) -> list[dict]:
    """Apply one overlay as an operator would, and wait until it runs; returns what was rendered."""
    directory = str(cluster.manifests / k8s.VARIANTS[overlay])
    rendered = k8s.render(cluster.kubectl, Path(directory))
    # A server-side dry run creates nothing, so the namespace must exist for the rest to be checked.
    (namespace,) = [o for o in rendered if o["kind"] == "Namespace"]
    cluster.ok("apply", "-f", "-", stdin=json.dumps(namespace))
    cluster.ok("apply", "-k", directory, "--validate=strict", "--dry-run=server")
    cluster.ok("apply", "-k", directory, "--validate=strict")
    deployments = {o["metadata"]["name"] for o in rendered if o["kind"] == "Deployment"}
    assert deployments, f"{overlay} renders no Deployment"
    cluster.wait("-n", NAMESPACE, "--for=condition=Available", "deployment", "--all")
    cluster.wait("-n", NAMESPACE, "--for=condition=Complete", "job/herald-migrate")
    running = cluster.get("-n", NAMESPACE, "deployments")["items"]
    assert {d["metadata"]["name"] for d in running} == deployments
    for deployment in running:
        spec, status = deployment["spec"], deployment["status"]
        assert status.get("availableReplicas") == spec["replicas"], deployment["metadata"]["name"]
    pods = cluster.get("-n", NAMESPACE, "pods", "--field-selector=status.phase=Running")["items"]
    assert len(pods) == sum(d["spec"]["replicas"] for d in running)
    assert {p["spec"]["nodeName"] for p in pods} == {"kwok-node"}, "the scheduler placed every pod"
    return rendered


def delete(cluster: Cluster, overlay: str) -> None:
    cluster.ok("delete", "-k", str(cluster.manifests / k8s.VARIANTS[overlay]), "--ignore-not-found",
               "--wait", f"--timeout={TIMEOUT_S}s")


@pytest.fixture
def local(cluster: Cluster) -> Iterator[list[dict]]:
    yield apply_and_wait(cluster, "local")
    delete(cluster, "local")  # gone before production, which uses the same namespace


def test_local_overlay_applies_and_its_deployments_become_available(cluster: Cluster, local: list[dict]) -> None:
    rendered = local
    deployments = cluster.get("-n", NAMESPACE, "deployments")["items"]
    replicas = {d["metadata"]["name"]: d["spec"]["replicas"] for d in deployments}
    assert set(replicas.values()) == {1}, replicas
    assert "herald-mailbox" in replicas
    kinds = {o["kind"] for o in rendered}
    assert {"Kafka", "KafkaNodePool", "KafkaTopic", "ScaledObject", "ClickHouseInstallation"} <= kinds
    topics = cluster.get("-n", NAMESPACE, "kafkatopics")["items"]
    assert len(topics) == sum(o["kind"] == "KafkaTopic" for o in rendered)


@pytest.fixture(scope="module")
def production(cluster: Cluster) -> list[dict]:
    return apply_and_wait(cluster, "production")


def test_production_overlay_applies_and_its_deployments_become_available(
        cluster: Cluster, production: list[dict]) -> None:
    gateway = cluster.get("-n", NAMESPACE, "deployment/herald-gateway")
    assert gateway["status"]["availableReplicas"] == 3
    kafka = cluster.get("-n", NAMESPACE, "kafka/herald")
    assert kafka["apiVersion"] == "kafka.strimzi.io/v1"
    pools = cluster.get("-n", NAMESPACE, "kafkanodepools")["items"]
    assert sum(p["spec"]["replicas"] for p in pools) == 3
    scaled = cluster.get("-n", NAMESPACE, "scaledobjects")["items"]
    assert len(scaled) == sum(o["kind"] == "ScaledObject" for o in production)


def secret_value(cluster: Cluster, key: str) -> str:
    data = cluster.get("-n", NAMESPACE, "secret/herald-secrets")["data"]
    return base64.b64decode(data[key]).decode()


def test_production_with_an_empty_secret_is_refused_by_the_api_server(
        cluster: Cluster, production: list[dict]) -> None:
    before = secret_value(cluster, "HERALD_API_KEY")
    assert before, "the good secrets were applied"
    # secrets.env copied from the example and not filled in: kustomize renders it...
    (cluster.manifests / k8s.SECRETS).write_text((k8s.K8S / f"{k8s.SECRETS}.example").read_text())
    rendered = k8s.render(cluster.kubectl, cluster.manifests / k8s.VARIANTS["production"])
    (secret,) = [o for o in rendered if o["kind"] == "Secret"]
    assert secret["data"]["HERALD_API_KEY"] == ""
    # ...and the API server refuses it, on its own (the ValidatingAdmissionPolicy of the overlay).
    refused = cluster.run("apply", "-k", str(cluster.manifests / k8s.VARIANTS["production"]), "--validate=strict")
    assert refused.returncode != 0, refused.stdout
    assert "herald-secrets-not-empty" in refused.stderr and "HERALD_API_KEY" in refused.stderr, refused.stderr
    assert secret_value(cluster, "HERALD_API_KEY") == before, "the running secret was kept"
    # One value left empty is enough.
    filled = k8s.filled_secrets().replace("HERALD_TRACKING_SECRET=test-herald-tracking-secret", "HERALD_TRACKING_SECRET=")
    assert "HERALD_TRACKING_SECRET=\n" in filled
    (cluster.manifests / k8s.SECRETS).write_text(filled)
    refused = cluster.run("apply", "--dry-run=server", "-k", str(cluster.manifests / k8s.VARIANTS["production"]))
    assert refused.returncode != 0 and "HERALD_TRACKING_SECRET" in refused.stderr, refused.stderr
    (cluster.manifests / k8s.SECRETS).write_text(k8s.filled_secrets())
