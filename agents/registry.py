"""Every stage of the pipeline, in flow order: the one list the worker, `herald up`, the Kubernetes
manifests' check and the docs read. A stage module only declares; importing it starts nothing."""

from agents.deliver import DELIVER_STAGE
from agents.digest import DIGEST_STAGE
from agents.ingest import INGEST
from agents.route import ROUTE
from agents.template import TEMPLATE
from agents.track import TRACK
from agents.validate import VALIDATE
from streams.stage import StageSpec

STAGES: dict[str, StageSpec] = {spec.name: spec for spec in (INGEST, VALIDATE, TEMPLATE, DIGEST_STAGE, ROUTE, DELIVER_STAGE,
                                                                 TRACK)}
