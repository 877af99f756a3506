"""The package as the image installs it: the wheel holds every module and its data, and the
Dockerfile copies every package the wheel is built from."""

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from streams.settings import REPO_ROOT

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out),
                    str(REPO_ROOT)], check=True, capture_output=True, timeout=300)
    [built] = out.glob("herald-*.whl")
    return zipfile.ZipFile(built)


def test_the_wheel_holds_every_package_its_schemas_migrations_and_dashboard(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    for package in PYPROJECT["tool"]["setuptools"]["packages"]:
        assert f"{package.replace('.', '/')}/__init__.py" in names, package
    avsc = {p.name for p in (REPO_ROOT / "schemas").glob("*.avsc")}
    assert avsc and {f"schemas/{name}" for name in avsc} <= names
    history = {f"schemas/history/{p.name}" for p in (REPO_ROOT / "schemas/history").glob("*.avsc")}
    assert history <= names
    migrations = {f"sinks/migrations/{p.name}" for p in (REPO_ROOT / "sinks/migrations").glob("*.sql")}
    assert migrations and migrations <= names
    # The dashboard's page and its bundle (`make assets`, which `make venv` runs, builds the bundle).
    assert {"gateway/static/index.html", "gateway/static/dist/dashboard.js", "gateway/static/dist/dashboard.css"} <= names
    assert not any(name.startswith("tests/") for name in names)


def test_the_wheel_declares_the_herald_command(wheel: zipfile.ZipFile) -> None:
    [entry_points] = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    assert "herald = tooling.cli:app" in wheel.read(entry_points).decode()


def test_the_dockerfile_copies_every_package_and_runs_as_a_user() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\w+)/ \1/$", dockerfile, re.MULTILINE))
    top_level = {package.split(".")[0] for package in PYPROJECT["tool"]["setuptools"]["packages"]}
    assert copied == top_level
    run_stage = dockerfile.rsplit("FROM ", 1)[1]
    assert re.search(r"^USER 10001$", run_stage, re.MULTILINE)  # the uid the manifests' securityContext names
    assert 'ENTRYPOINT ["herald"]' in run_stage
    assert (REPO_ROOT / "deploy/k8s/base/stages/deliver.yaml").read_text().count("runAsUser: 10001") >= 1
