"""``bridge data-report``: what the bridge stores, per table, for the record of processing
activities: what each table holds, how many rows, the oldest, and the retention that
applies (from the declarations in bridge/db/retention.py and each network's)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from bridge.config import RetentionConfig
from bridge.core.retention import declarations, schema_tables
from bridge.db.engine import Database
from bridge.db.models import Base
from bridge.db.retention import table_summary

UNDECLARED = "(not declared: nobody has said what this table holds)"


@dataclass(frozen=True, slots=True)
class TableReport:
    table: str
    what: str
    rows: int
    oldest: float | None
    retention: str


def retention_text(key: str | None, kept: str, retention: RetentionConfig) -> str:
    if key is None:
        return kept
    days = retention.days(key)
    return f"retention.{key}: " + (f"{days} days" if days else "0, kept for ever")


async def build(db: Database, retention: RetentionConfig) -> list[TableReport]:
    declared = {data.table: data for data in declarations()}
    reports = []
    async with db.sessions() as session:
        for name in schema_tables():
            table = Base.metadata.tables[name]
            data = declared.get(name)
            rows, oldest = await table_summary(session, table,
                                               data.age_column if data else None)
            if data is None:
                reports.append(TableReport(name, UNDECLARED, rows, None, "unknown"))
                continue
            reports.append(TableReport(name, data.what, rows, oldest,
                                       retention_text(data.retention, data.kept, retention)))
    return reports


def render(reports: list[TableReport]) -> str:
    """One block per table: its name, rows and oldest on the first line, then what it holds
    and how long it is kept (descriptions are sentences; a table layout would cut them)."""
    lines = []
    for report in reports:
        oldest = (datetime.fromtimestamp(report.oldest, UTC).strftime("%Y-%m-%d %H:%M UTC")
                  if report.oldest is not None else "-")
        lines += [f"{report.table}: {report.rows} rows, oldest {oldest}",
                  f"  stores:   {report.what}",
                  f"  kept:     {report.retention}", ""]
    return "\n".join(lines)
