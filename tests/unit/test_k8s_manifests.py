"""deploy/k8s: the kustomize base and overlays, rendered by the real kustomize (`kubectl kustomize`),
validated against Kubernetes' own schemas (kubernetes-validate) and checked against the code.

Every expectation comes from the code: the stages (agents.registry.STAGES), their consumer groups
and input topics (the stage modules' Faust apps, sinks.event_sink), the topic catalog and its
config (streams.topics), and the settings (streams.settings.Settings). Applying the overlays to a
real API server, with the operators' CRDs, is tests/integration/test_k8s.py (`make k8s-check`).
"""

import base64
import json
import re
import typing
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests import k8s
from tooling.local import worker_groups
from streams.settings import Settings
from streams.topics import CATALOG, topic_config
from agents.registry import STAGES

K8S = k8s.K8S
VARIANTS = {name: K8S / path for name, path in k8s.VARIANTS.items()}
IMAGE = "ghcr.io/herald/herald"
CLUSTER_SCOPED = {"Namespace", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
WORKLOADS = {"Deployment", "Job"}
# The version deploy/local/k8s.sh builds: the schemas the renderings are validated against.
KUBERNETES_VERSION = "1.32.0"
# The operators' kinds: kubernetes-validate has no schema for them; the API server checks them
# against the operators' CRDs in tests/integration/test_k8s.py.
CUSTOM_KINDS = {"Kafka", "KafkaNodePool", "KafkaTopic", "ScaledObject", "ClickHouseInstallation"}

Obj = dict[str, Any]


# ---------------------------------------------------------------- the files and the renderings ---

def load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def kustomization(directory: Path) -> Obj:
    (doc,) = load_all(directory / "kustomization.yaml")
    return doc


def env_file(path: Path) -> Path:
    """A generator's env file; a git-ignored one (real secrets) falls back to its committed .example."""
    if path.exists():
        return path
    example = path.with_name(path.name + ".example")
    assert example.exists(), f"{path} is missing and has no {example.name}"
    return example


def containers(node: Any) -> Iterator[Obj]:
    """Every container anywhere in an object (kustomize's image transformer looks everywhere too)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from (c for c in value if isinstance(c, dict))
            else:
                yield from containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from containers(item)


@pytest.fixture(scope="module")
def renderings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Obj]]:
    """`kubectl kustomize` of each variant, production with its secrets.env filled in."""
    kubectl = k8s.kubectl()
    tree = k8s.manifests(tmp_path_factory.mktemp("render"), k8s.filled_secrets())
    return {name: k8s.render(kubectl, tree / path) for name, path in k8s.VARIANTS.items()}


# ---------------------------------------------------------------- helpers over a rendering -------

def of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in of_kind(objects, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def config(objects: list[Obj]) -> dict[str, str]:
    return one(objects, "ConfigMap", "herald-config")["data"]


def secret(objects: list[Obj]) -> dict[str, str]:
    data = one(objects, "Secret", "herald-secrets")["data"]
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


def setting_path(key: str) -> list[str]:
    """HERALD_SMS__TWILIO__AUTH_TOKEN → ["sms", "twilio", "auth_token"] (pydantic-settings' nesting)."""
    return key.removeprefix("HERALD_").lower().split("__")


def is_setting(key: str) -> bool:
    model: Any = Settings
    for name in setting_path(key):
        fields = getattr(model, "model_fields", None)
        if not fields or name not in fields:
            return False
        annotation = fields[name].annotation
        # A nested block, maybe optional (sms.secondary): the model class inside the annotation.
        model = next((t for t in (annotation, *typing.get_args(annotation)) if isinstance(t, type)
                      and hasattr(t, "model_fields")), annotation)
    return True


def settings_of(objects: list[Obj]) -> Settings:
    """The Settings a pod of this rendering sees (ConfigMap + Secret), validated by pydantic."""
    values: dict[str, Any] = {}
    for key, value in {**config(objects), **secret(objects)}.items():
        *blocks, name = setting_path(key)
        target = values
        for block in blocks:
            target = target.setdefault(block, {})
        target[name] = json.loads(value) if value.startswith("[") else value
    return Settings(_env_file=None, **values)


def pod_spec(workload: Obj) -> Obj:
    return workload["spec"]["template"]["spec"]


def herald_containers(objects: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    for workload in objects:
        if workload["kind"] in WORKLOADS:
            for container in pod_spec(workload)["containers"]:
                yield workload, container


def stage_of(deployment: Obj) -> str | None:
    command = pod_spec(deployment)["containers"][0].get("command", [])
    return command[3] if command[:3] == ["herald", "worker", "--stage"] and len(command) == 4 else None


def stage_deployments(objects: list[Obj]) -> dict[str, Obj]:
    found = {}
    for deployment in of_kind(objects, "Deployment"):
        stage = stage_of(deployment)
        if stage is not None:
            assert stage not in found, f"two Deployments run the {stage} stage"
            found[stage] = deployment
    return found


def quantity(value: str | int | float) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value)).groups()
    return float(number) * units.get(unit, 1)


@cache
def stage_inputs(stage: str) -> tuple[str, frozenset[str]]:
    """The consumer group and the topics whose lag should scale a stage, read off the registry."""
    spec = STAGES[stage]
    # Retry and scheduled topics hold tasks waiting until due: their lag is by design, not work to scale for.
    return spec.group_id(Settings()), frozenset(t.name for t in spec.inputs) - {t.name for t in spec.delayed_inputs}


@pytest.fixture(params=list(VARIANTS))
def rendered(request: pytest.FixtureRequest, renderings: dict[str, list[Obj]]) -> list[Obj]:
    return renderings[request.param]


# ---------------------------------------------------------------- the files ----------------------

def yaml_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*") if p.suffix in (".yaml", ".yml"))


def test_every_yaml_file_parses() -> None:
    assert yaml_files(), "no manifests under deploy/k8s"
    for path in yaml_files():
        for doc in load_all(path):
            if isinstance(doc, dict) and path.name != "kustomization.yaml":
                assert {"apiVersion", "kind", "metadata"} <= doc.keys(), f"{path}: not a Kubernetes object"


def referenced_files(directory: Path) -> set[Path]:
    k = kustomization(directory)
    files = {directory / "kustomization.yaml"}
    for entry in k.get("resources", []):
        path = (directory / entry).resolve()
        assert path.exists(), f"{directory}/kustomization.yaml: resource {entry} does not exist"
        files |= referenced_files(path) if path.is_dir() else {path}
    for entry in k.get("patches", []):
        if "path" in entry:
            path = (directory / entry["path"]).resolve()
            assert path.is_file(), f"{directory}/kustomization.yaml: patch {entry['path']} does not exist"
            files.add(path)
    for generator in k.get("configMapGenerator", []) + k.get("secretGenerator", []):
        for name in generator.get("envs", []) + generator.get("files", []):
            files.add(env_file((directory / name).resolve()))
    return files


def test_kustomizations_reference_existing_files_and_every_file_is_used() -> None:
    used: set[Path] = set()
    for variant in VARIANTS.values():
        used |= referenced_files(variant.resolve())
    unused = [str(p.relative_to(K8S)) for p in yaml_files() if p.resolve() not in used]
    assert not unused, f"YAML files no kustomization uses: {unused}"


def test_secret_files_stay_out_of_git() -> None:
    for directory in VARIANTS.values():
        for generator in kustomization(directory).get("secretGenerator", []):
            for name in generator.get("envs", []) + generator.get("files", []):
                ignore = directory / ".gitignore"
                assert ignore.exists() and name in ignore.read_text().split(), f"{directory / name} is not git-ignored"
                assert (directory / f"{name}.example").exists()


def test_production_does_not_render_without_its_secrets_file(tmp_path: Path) -> None:
    output = k8s.kustomize(k8s.kubectl(), k8s.manifests(tmp_path, secrets=None) / k8s.VARIANTS["production"])
    assert output.returncode != 0, "production rendered without secrets.env: it would ship placeholders"
    assert "secrets.env" in output.stderr


def test_the_api_server_refuses_production_secrets_left_empty(renderings: dict[str, list[Obj]]) -> None:
    """The refusal itself runs in tests/integration/test_k8s.py; here: it covers the example's keys."""
    policy = one(renderings["production"], "ValidatingAdmissionPolicy")
    (binding,) = [b for b in of_kind(renderings["production"], "ValidatingAdmissionPolicyBinding")
                  if b["spec"]["policyName"] == policy["metadata"]["name"]]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert binding["spec"]["matchResources"]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": one(renderings["production"], "Namespace")["metadata"]["name"]}
    required = re.findall(r"'(HERALD_[A-Z_]+)'", policy["spec"]["validations"][0]["expression"])
    example = (K8S / f"{k8s.SECRETS}.example").read_text()
    assert {"HERALD_API_KEY", "HERALD_CLICKHOUSE_PASSWORD"} <= set(required)
    for key in required:
        assert re.search(rf"^{key}=$", example, re.M), f"{key} is required but not in secrets.env.example"
    assert one(renderings["local"], "Secret", "herald-secrets")  # local keeps the base's placeholders
    assert not of_kind(renderings["local"], "ValidatingAdmissionPolicy")


# ---------------------------------------------------------------- every rendering ----------------

def test_every_object_validates_against_the_kubernetes_schemas(rendered: list[Obj]) -> None:
    validated = 0
    for obj in rendered:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {error.message} at {list(error.path)}")
        validated += 1
    assert validated >= 2 * len(STAGES)  # at least a Deployment and a PDB per stage



def test_everything_is_in_the_herald_namespace(rendered: list[Obj]) -> None:
    (namespace,) = of_kind(rendered, "Namespace")
    for obj in rendered:
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"].get("namespace") == namespace["metadata"]["name"], obj["metadata"]["name"]


def test_config_keys_are_real_settings(rendered: list[Obj]) -> None:
    for key in [*config(rendered), *secret(rendered)]:
        assert is_setting(key), f"{key} is not a setting of streams.settings.Settings"
    assert not set(config(rendered)) & set(secret(rendered)), "a setting in both the ConfigMap and the Secret"
    settings_of(rendered)  # and every value validates
    # Consumer groups are `<app_id>-<stage>`: the KEDA triggers below assume the default app id.
    assert "HERALD_APP_ID" not in config(rendered)
    assert {"HERALD_API_KEY", "HERALD_CLICKHOUSE_PASSWORD"} <= set(secret(rendered))


def test_every_container_has_requests_and_limits(rendered: list[Obj]) -> None:
    checked = 0
    for obj in rendered:
        for container in containers(obj):
            resources = container.get("resources", {})
            for resource in ("cpu", "memory"):
                request = resources.get("requests", {}).get(resource)
                limit = resources.get("limits", {}).get(resource)
                assert request and limit, f"{obj['metadata']['name']}/{container['name']}: no {resource} request+limit"
                assert quantity(request) <= quantity(limit), f"{obj['metadata']['name']}: {resource} request > limit"
            checked += 1
    assert checked >= len(STAGES) + 3  # the stages, the gateway, the migrate Job, ClickHouse


def test_every_deployment_has_probes_and_a_pdb(rendered: list[Obj]) -> None:
    deployments = of_kind(rendered, "Deployment")
    budgets = of_kind(rendered, "PodDisruptionBudget")
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        for container in pod_spec(deployment)["containers"]:
            assert "livenessProbe" in container and "readinessProbe" in container, f"{name}: probes"
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items(), f"{name}: selector"
        own = [b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(own) == 1, f"{name}: {len(own)} PodDisruptionBudgets select its pods"
        others = [d for d in deployments if d is not deployment
                  and own[0]["spec"]["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert not others, f"the PDB of {name} also selects {[d['metadata']['name'] for d in others]}"
        # maxUnavailable: a single-replica minAvailable=1 budget would block every node drain.
        assert own[0]["spec"].get("maxUnavailable", 0) >= 1, f"{name}: its PDB must allow a disruption"
    assert len(budgets) == len(deployments)


def test_one_deployment_per_stage_running_that_stage(rendered: list[Obj]) -> None:
    deployments = stage_deployments(rendered)
    assert set(deployments) == set(STAGES)
    for stage, deployment in deployments.items():
        assert deployment["metadata"]["name"] == f"herald-{stage}"
        assert len(pod_spec(deployment)["containers"]) == 1
        # KEDA's HPA owns the count: a replicas field would reset it on every apply.
        assert "replicas" not in deployment["spec"], f"herald-{stage} sets replicas; KEDA owns them"


def test_each_stage_scales_on_its_own_input_topics_and_group(rendered: list[Obj]) -> None:
    settings = settings_of(rendered)
    kafka = one(rendered, "Kafka")
    host, port = settings.kafka_bootstrap.rsplit(":", 1)
    # The KEDA operator lives in another namespace: it needs the service's namespaced name.
    bootstrap = f"{host}.{kafka['metadata']['namespace']}.svc:{port}"
    scaled = of_kind(rendered, "ScaledObject")
    deployments = stage_deployments(rendered)
    assert {s["spec"]["scaleTargetRef"]["name"] for s in scaled} == {d["metadata"]["name"] for d in deployments.values()}
    assert len(scaled) == len(deployments)
    groups = set()
    for stage, deployment in deployments.items():
        (obj,) = [s for s in scaled if s["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]]
        assert obj["spec"]["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
        group, topics = stage_inputs(stage)
        triggers = obj["spec"]["triggers"]
        assert {t["type"] for t in triggers} == {"kafka"}
        assert {t["metadata"]["consumerGroup"] for t in triggers} == {group}, stage
        assert sorted(t["metadata"]["topic"] for t in triggers) == sorted(topics), stage
        for trigger in triggers:
            assert trigger["metadata"]["bootstrapServers"] == bootstrap
            assert trigger["metadata"].get("offsetResetPolicy") == "earliest"  # as Faust and the sink start
        # More consumers than partitions would sit idle.
        assert 1 <= obj["spec"]["minReplicaCount"] <= obj["spec"]["maxReplicaCount"] <= settings.topic_partitions
        groups.add(group)
    assert groups == set(worker_groups(Settings()))


def test_kafka_topics_are_the_catalog(rendered: list[Obj]) -> None:
    settings = settings_of(rendered)
    kafka = one(rendered, "Kafka")
    topics = {t["spec"].get("topicName", t["metadata"]["name"]): t for t in of_kind(rendered, "KafkaTopic")}
    assert len(topics) == len(of_kind(rendered, "KafkaTopic")), "two KafkaTopics for one topic"
    # One Strimzi API version: the cluster's CRDs serve that one (a v1beta2 topic next to a v1 Kafka does not apply).
    assert {t["apiVersion"] for t in topics.values()} == {kafka["apiVersion"]}
    assert set(topics) == {spec.name for spec in CATALOG}
    for spec in CATALOG:
        topic = topics[spec.name]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", topic["metadata"]["name"]), "not a DNS name"
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
        assert topic["spec"]["partitions"] == settings.topic_partitions, spec.name
        assert topic["spec"]["replicas"] == settings.topic_replication, spec.name
        assert {k: str(v) for k, v in topic["spec"]["config"].items()} == topic_config(spec, settings), spec.name
        assert (topic["spec"]["config"]["cleanup.policy"] == "compact") == spec.compacted, spec.name


def test_kafka_cluster_can_hold_the_topics(rendered: list[Obj]) -> None:
    settings = settings_of(rendered)
    kafka = one(rendered, "Kafka")
    pools = [p for p in of_kind(rendered, "KafkaNodePool")
             if p["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]]
    brokers = sum(p["spec"]["replicas"] for p in pools if "broker" in p["spec"]["roles"])
    broker_config = kafka["spec"]["kafka"]["config"]
    assert settings.topic_replication <= brokers
    assert broker_config["offsets.topic.replication.factor"] <= brokers
    # acks=all must still succeed with one replica down, and never with none in sync.
    assert broker_config["min.insync.replicas"] == max(1, settings.topic_replication - 1)
    assert kafka["spec"]["entityOperator"]["topicOperator"] is not None  # it makes the KafkaTopics


def test_workers_reach_kafka_at_the_strimzi_bootstrap_service(rendered: list[Obj]) -> None:
    kafka = one(rendered, "Kafka")
    plain = [listener for listener in kafka["spec"]["kafka"]["listeners"] if not listener["tls"]]
    assert plain, "Herald's Kafka clients have no TLS settings: they need a plain listener"
    expected = {f"{kafka['metadata']['name']}-kafka-bootstrap:{listener['port']}" for listener in plain}
    assert settings_of(rendered).kafka_bootstrap in expected


def test_herald_reaches_clickhouse_as_a_user_it_can_log_in_as(rendered: list[Obj]) -> None:
    settings = settings_of(rendered)
    chi = one(rendered, "ClickHouseInstallation")
    service_name = chi["spec"]["defaults"]["templates"]["serviceTemplate"]
    (service,) = [s for s in chi["spec"]["templates"]["serviceTemplates"] if s["name"] == service_name]
    assert service["generateName"].replace("{chi}", chi["metadata"]["name"]) == settings.clickhouse_host
    assert service["spec"]["type"] == "ClusterIP"
    assert {settings.clickhouse_port, settings.clickhouse_http_port} <= {p["port"] for p in service["spec"]["ports"]}
    users = chi["spec"]["configuration"]["users"]
    password = users[f"{settings.clickhouse_user}/password"]["valueFrom"]["secretKeyRef"]
    assert password == {"name": "herald-secrets", "key": "HERALD_CLICKHOUSE_PASSWORD"}
    assert users[f"{settings.clickhouse_user}/networks/ip"], "the operator's default only admits its own pods"


def test_herald_containers_share_config_image_and_writable_data_dir(rendered: list[Obj]) -> None:
    settings = settings_of(rendered)
    names = {(o["kind"], o["metadata"]["name"]) for o in rendered}
    images = set()
    for workload, container in herald_containers(rendered):
        where = f"{workload['metadata']['name']}/{container['name']}"
        assert container["command"][0] == "herald", where
        for source in container.get("envFrom", []):
            ref = source.get("configMapRef") or source.get("secretRef")
            kind = "ConfigMap" if "configMapRef" in source else "Secret"
            assert (kind, ref["name"]) in names, f"{where}: {kind} {ref['name']} is not rendered"
        assert {"name": "herald-config"} in [s.get("configMapRef") for s in container["envFrom"]], where
        # The root filesystem is read-only; Faust writes under HERALD_DATA_DIR.
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, where
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        assert str(settings.data_dir) in mounts, f"{where}: {settings.data_dir} is not a volume"
        images.add(container["image"])
    assert len(images) == 1, f"Herald containers run different images: {images}"


def test_gateway_listens_on_its_setting_and_is_probed_on_health(rendered: list[Obj]) -> None:
    settings = settings_of(rendered)
    gateway = one(rendered, "Deployment", "herald-gateway")
    (container,) = pod_spec(gateway)["containers"]
    assert container["command"] == ["herald", "gateway"]
    assert settings.gateway_host == "0.0.0.0", "the gateway must listen beyond the pod's loopback"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in (container["readinessProbe"], container["livenessProbe"]):
        assert probe["httpGet"]["path"] == "/health"
        assert ports.get(probe["httpGet"]["port"], probe["httpGet"]["port"]) == settings.gateway_port
    service = one(rendered, "Service", "herald-gateway")
    assert service["spec"]["selector"].items() <= gateway["spec"]["template"]["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    assert ports.get(port["targetPort"], port["targetPort"]) == settings.gateway_port
    assert gateway["spec"]["replicas"] >= 1


def test_a_job_migrates_clickhouse_and_nothing_creates_topics(rendered: list[Obj]) -> None:
    (job,) = of_kind(rendered, "Job")
    (container,) = pod_spec(job)["containers"]
    assert container["command"] == ["herald", "migrate"]
    assert pod_spec(job)["restartPolicy"] in ("OnFailure", "Never")
    for _, container in herald_containers(rendered):
        assert "topics" not in container["command"], "topics come from the KafkaTopics (Strimzi)"


# ---------------------------------------------------------------- the overlays -------------------

def test_local_runs_one_of_everything_with_a_mailbox(renderings: dict[str, list[Obj]]) -> None:
    objects = renderings["local"]
    for scaled in of_kind(objects, "ScaledObject"):
        assert scaled["spec"]["maxReplicaCount"] == 1, scaled["metadata"]["name"]
    for deployment in of_kind(objects, "Deployment"):
        assert deployment["spec"].get("replicas", 1) == 1, deployment["metadata"]["name"]
    settings = settings_of(objects)
    mailbox = one(objects, "Service", "herald-mailbox")
    assert settings.smtp_host == mailbox["metadata"]["name"]
    assert settings.smtp_port in {p["port"] for p in mailbox["spec"]["ports"]}


def test_production_is_replicated_and_bigger(renderings: dict[str, list[Obj]]) -> None:
    production, base = renderings["production"], renderings["base"]
    assert settings_of(production).topic_replication == 3
    assert all(t["spec"]["replicas"] == 3 for t in of_kind(production, "KafkaTopic"))
    assert one(production, "Deployment", "herald-gateway")["spec"]["replicas"] > \
        one(base, "Deployment", "herald-gateway")["spec"]["replicas"]
    minimum = {s["metadata"]["name"]: s["spec"]["minReplicaCount"] for s in of_kind(production, "ScaledObject")}
    assert minimum["herald-deliver"] == max(minimum.values()) > min(minimum.values())
    assert minimum["herald-deliver"] > one(base, "ScaledObject", "herald-deliver")["spec"]["minReplicaCount"]
    base_resources = {w["metadata"]["name"]: c["resources"] for w, c in herald_containers(base)}
    for workload, container in herald_containers(production):
        for bound in ("requests", "limits"):
            for resource, value in container["resources"][bound].items():
                smaller = base_resources[workload["metadata"]["name"]][bound][resource]
                assert quantity(value) >= quantity(smaller), f"{workload['metadata']['name']}: {bound}.{resource}"
    for _, container in herald_containers(production):
        assert container["image"].startswith(IMAGE + ":") and not container["image"].endswith(":latest")


def test_stage_workers_are_probed_on_their_health_endpoints(rendered: list[Obj]) -> None:
    settings = settings_of(rendered)
    assert settings.health_host == "0.0.0.0" and settings.health_port > 0, "the kubelet must reach a fixed port"
    for stage, deployment in stage_deployments(rendered).items():
        (container,) = pod_spec(deployment)["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe, path in ((container["livenessProbe"], "/healthz"), (container["readinessProbe"], "/readyz")):
            assert probe["httpGet"]["path"] == path, stage
            assert ports.get(probe["httpGet"]["port"], probe["httpGet"]["port"]) == settings.health_port, stage
