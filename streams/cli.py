"""The `herald` command line."""

import importlib
from typing import Annotated

import typer
from rich.console import Console

from streams.processes import run_stage_processes
from streams.settings import get_settings

app = typer.Typer(help="Herald: event-sourced notifications on Kafka, Avro and ClickHouse.", no_args_is_help=True)
topics_app = typer.Typer(help="Kafka topics of the catalog.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
console = Console()

# Stage name → the module whose import registers its Faust agents.
STAGES = {
    "ingest": "agents.ingest",
    "validate": "agents.validate",
    "template": "agents.template",
    "route": "agents.route",
    "deliver": "agents.deliver",
    "track": "agents.track",
}


@topics_app.command("create")
def topics_create() -> None:
    """Create every topic of the catalog that is missing (idempotent)."""
    from streams.topics import CATALOG, create_topics

    created = create_topics(get_settings())
    console.print(f"[green]{len(created)} created[/], {len(CATALOG) - len(created)} already there")
    for name in created:
        console.print(f"  + {name}")


@app.command()
def migrate(
    down: Annotated[int, typer.Option(help="Revert this many migrations instead of applying.")] = 0,
) -> None:
    """Apply the ClickHouse migrations in sinks/migrations (idempotent)."""
    from sinks.migrate import migrate_down, migrate_up

    settings = get_settings()
    names = migrate_down(settings, down) if down else migrate_up(settings)
    verb = "reverted" if down else "applied"
    console.print(f"[green]{len(names)} migration(s) {verb}[/] in ClickHouse database {settings.clickhouse_database}")
    for name in names:
        console.print(f"  {name}")


@app.command()
def worker(
    stage: Annotated[list[str], typer.Option(help=f"Stage(s) to run: {', '.join(STAGES)} or all.")] = ["all"],
    loglevel: Annotated[str, typer.Option(help="crit, error, warn, info or debug.")] = "warn",
) -> None:
    """Run one stage as a Faust worker, or all of them, one process each."""
    names = list(STAGES) if "all" in stage else stage
    unknown = set(names) - set(STAGES)
    if unknown:
        raise typer.BadParameter(f"unknown stage(s): {', '.join(sorted(unknown))}")
    if len(names) > 1:
        raise typer.Exit(run_stage_processes(names, loglevel))
    from faust import Worker

    module = importlib.import_module(STAGES[names[0]])
    Worker(module.stage.app, *module.stage.services, loglevel=loglevel, quiet=True).execute_from_commandline()


if __name__ == "__main__":
    app()
