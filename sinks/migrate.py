"""Numbered ClickHouse migrations, applied in order; `{db}.schema_migrations` records what ran.

A migration is `NNNN_name.up.sql` with its `NNNN_name.down.sql`; statements are separated by `;`
and `{db}` stands for the configured database.
"""

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from clickhouse_driver import Client

from sinks.clickhouse_client import connect
from streams.settings import Settings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    up: Path
    down: Path


def discover() -> list[Migration]:
    migrations = []
    for up in sorted(MIGRATIONS_DIR.glob("*.up.sql")):
        stem = up.name.removesuffix(".up.sql")
        version, _, name = stem.partition("_")
        migrations.append(Migration(int(version), name, up, up.with_name(f"{stem}.down.sql")))
    return migrations


def statements(path: Path, db: str) -> list[str]:
    sql = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("--"))
    return [s.strip().replace("{db}", db) for s in sql.split(";") if s.strip()]


def ensure_bookkeeping(client: Client, db: str) -> None:
    client.execute(f"CREATE DATABASE IF NOT EXISTS {db}")
    client.execute(
        f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations "
        "(version UInt32, name String, applied UInt8, applied_at DateTime, seq UInt64) "
        "ENGINE = MergeTree() ORDER BY (version, seq)"
    )


def applied_versions(client: Client, db: str) -> set[int]:
    # The latest row per version wins: applied=1 after up, applied=0 after down.
    rows = client.execute(f"SELECT version, argMax(applied, seq) FROM {db}.schema_migrations GROUP BY version")
    return {version for version, applied in rows if applied}


def record(client: Client, db: str, migration: Migration, applied: bool) -> None:
    client.execute(
        f"INSERT INTO {db}.schema_migrations (version, name, applied, applied_at, seq) VALUES",
        [(migration.version, migration.name, int(applied), datetime.now(timezone.utc), time.time_ns())],
    )


def migrate_up(settings: Settings) -> list[str]:
    """Apply every migration not applied yet; returns their names. Safe to run any number of times."""
    client = connect(settings, database=None)
    db = settings.clickhouse_database
    ensure_bookkeeping(client, db)
    done = applied_versions(client, db)
    ran = []
    for migration in discover():
        if migration.version in done:
            continue
        for statement in statements(migration.up, db):
            client.execute(statement)
        record(client, db, migration, applied=True)
        ran.append(f"{migration.version:04d}_{migration.name}")
    return ran


def migrate_down(settings: Settings, steps: int = 1) -> list[str]:
    """Revert the last `steps` applied migrations, newest first."""
    client = connect(settings, database=None)
    db = settings.clickhouse_database
    ensure_bookkeeping(client, db)
    done = applied_versions(client, db)
    reverted = []
    for migration in [m for m in reversed(discover()) if m.version in done][:steps]:
        for statement in statements(migration.down, db):
            client.execute(statement)
        record(client, db, migration, applied=False)
        reverted.append(f"{migration.version:04d}_{migration.name}")
    return reverted
