"""Every stage of the pipeline, in flow order: the one list the worker, `herald up`, the Kubernetes
manifests' check and the docs read. A stage module only declares; importing it starts nothing.

A stage's module is imported when its declaration is first asked for, not when the registry is: a
worker then holds only its own stage's libraries (ingest needs no provider SDKs), and the supervisor
of `herald worker --stage all`, which needs only the names, holds none of them.
"""

from collections.abc import Iterator, Mapping
from importlib import import_module

from streams.stage import StageSpec

# name → "module:declaration", in flow order.
STAGE_PATHS: dict[str, str] = {
    "ingest": "agents.ingest:INGEST",
    "validate": "agents.validate:VALIDATE",
    "template": "agents.template:TEMPLATE",
    "digest": "agents.digest:DIGEST_STAGE",
    "route": "agents.route:ROUTE",
    "deliver": "agents.deliver:DELIVER_STAGE",
    "track": "agents.track:TRACK",
}


class StageRegistry(Mapping[str, StageSpec]):
    """The stages by name; a stage's module is imported on first access to its declaration."""

    def __getitem__(self, name: str) -> StageSpec:
        module, declaration = STAGE_PATHS[name].split(":")
        spec: StageSpec = getattr(import_module(module), declaration)
        assert spec.name == name, f"{STAGE_PATHS[name]} declares stage {spec.name!r}, not {name!r}"
        return spec

    def __iter__(self) -> Iterator[str]:
        return iter(STAGE_PATHS)

    def __len__(self) -> int:
        return len(STAGE_PATHS)


STAGES = StageRegistry()
