"""The Kubernetes tools of deploy/local/k8s.sh for the tests: kubectl (its kustomize renders the
overlays), and the control plane's binaries and CRDs, built and cached by version outside the clone.

A missing tool fails the test with HERALD_REQUIRE_SERVERS=1 (`make test`, CI) and skips it otherwise.
"""

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.settings import REPO_ROOT

K8S = REPO_ROOT / "deploy" / "k8s"
SCRIPT = REPO_ROOT / "deploy" / "local" / "k8s.sh"
VARIANTS = {"base": "base", "local": "overlays/local", "production": "overlays/production"}
SECRETS = Path("overlays/production/secrets.env")

Obj = dict[str, Any]


def missing(message: str) -> None:
    if os.environ.get("HERALD_REQUIRE_SERVERS") == "1":
        pytest.fail(message)
    pytest.skip(message)


def toolchain(env: dict[str, str] | None = None) -> dict[str, str]:
    """`deploy/local/k8s.sh env`: where the binaries, the kubeconfig and the CRDs are (or will be)."""
    output = subprocess.run([str(SCRIPT), "env"], env=env, capture_output=True, text=True, check=True, timeout=30)
    return dict(line.split("=", 1) for line in output.stdout.splitlines())


def kubectl() -> str:
    """The cached kubectl (the control plane's version), else one on PATH; skips or fails without."""
    cached = Path(toolchain()["HERALD_K8S_BIN"]) / "kubectl"
    found = str(cached) if cached.exists() else shutil.which("kubectl")
    if found is None:
        missing(f"no kubectl: `deploy/local/k8s.sh build` builds one into {cached.parent}")
    return found


def filled_secrets() -> str:
    """secrets.env as an operator fills it in: every key of the example with a value."""
    example = (K8S / f"{SECRETS}.example").read_text().splitlines()
    keys = [line.split("=", 1)[0] for line in example if line and not line.startswith("#")]
    return "".join(f"{key}=test-{key.lower().replace('_', '-')}\n" for key in keys)


def manifests(tmp_path: Path, secrets: str | None) -> Path:
    """A copy of deploy/k8s with production's git-ignored secrets.env holding `secrets` (None: no file)."""
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns(SECRETS.name))
    if secrets is not None:
        (tree / SECRETS).write_text(secrets)
    return tree


def kustomize(kubectl_path: str, directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([kubectl_path, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)


def render(kubectl_path: str, directory: Path) -> list[Obj]:
    output = kustomize(kubectl_path, directory)
    assert output.returncode == 0, f"kubectl kustomize {directory}: {output.stderr}"
    return [doc for doc in yaml.safe_load_all(output.stdout) if doc is not None]
