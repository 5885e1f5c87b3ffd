"""Durable runs: agents, runs, their steps and events, in SQLite (default) or PostgreSQL.

A run is a program instance of an agent's plan. Every step that finishes is checkpointed with
its outputs, so a process that dies (SIGKILL included) and starts again resumes each unfinished
run from its last finished steps without running those again. A step's key names it within the
run (`solve.tool.exec@2` for the second turn of a loop); writing a finished step twice keeps the
first result, so a resumed run can never see two different outputs for one step.

SQLAlchemy 2 Core over `sqlite:///PATH` (WAL, so readers never block the writer) or
`postgresql+psycopg://...`. The default database is `$HETAGENT_DB`, else
`~/.local/share/hetagent/runs.db`.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Engine,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    create_engine,
    event,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.pool import StaticPool

RUN_STATES = ("pending", "running", "succeeded", "failed", "cancelled")
UNFINISHED = ("pending", "running")
STEP_STATES = ("running", "succeeded", "failed")

metadata = MetaData()

agents = Table(
    "agents",
    metadata,
    Column("tenant", String(128), primary_key=True),
    Column("name", String(256), primary_key=True),
    Column("document", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant", String(128), nullable=False, index=True),
    Column("agent", String(256), nullable=False),
    Column("plan", JSON, nullable=False),
    Column("inputs", JSON, nullable=False),
    Column("options", JSON, nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("outputs", JSON),
    Column("error", Text),
    Column("trace_id", String(32)),
    Column("owner", String(128)),  # the process executing it
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

steps = Table(
    "steps",
    metadata,
    Column("run_id", String(64), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    Column("key", String(512), primary_key=True),
    Column("node", String(256)),
    Column("kind", String(64), nullable=False),
    Column("pool", String(128)),
    Column("status", String(16), nullable=False),
    Column("attempt", Integer, nullable=False, default=1),
    Column("outputs", JSON),
    Column("details", JSON),  # tokens, KV reused, tool resource use, ...
    Column("error", Text),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float),
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(64), ForeignKey("runs.id", ondelete="CASCADE"), index=True),
    Column("time", Float, nullable=False),
    Column("type", String(64), nullable=False),
    Column("data", JSON, nullable=False),
)


# One statement for a batch of step changes, the same in SQLite and PostgreSQL; written out
# once (a SQLAlchemy upsert construct would be compiled again for every batch). A step that
# has finished keeps its first outputs.
_STEP_UPSERT = text(
    """
    INSERT INTO steps (run_id, key, kind, node, pool, status, attempt, outputs, details, error,
                       started_at, finished_at)
    VALUES (:run_id, :key, :kind, :node, :pool, :status, :attempt, :outputs, :details, :error,
            :started_at, :finished_at)
    ON CONFLICT (run_id, key) DO UPDATE SET
        status = excluded.status,
        attempt = steps.attempt + excluded.attempt,
        started_at = CASE WHEN excluded.attempt > 0 THEN excluded.started_at
                          ELSE steps.started_at END,
        outputs = excluded.outputs,
        details = excluded.details,
        error = excluded.error,
        finished_at = excluded.finished_at
    WHERE steps.status != 'succeeded'
    """
).bindparams(bindparam("outputs", type_=JSON), bindparam("details", type_=JSON))


class StoreError(ValueError):
    """The database cannot be used (bad URL, unreachable server); the message says which."""


@dataclass(frozen=True)
class Run:
    id: str
    tenant: str
    agent: str
    plan: dict[str, Any]
    inputs: dict[str, Any]
    options: dict[str, Any]
    status: str
    outputs: dict[str, Any] | None
    error: str | None
    trace_id: str | None
    owner: str | None
    created_at: float
    updated_at: float

    @property
    def finished(self) -> bool:
        return self.status not in UNFINISHED


@dataclass(frozen=True)
class Step:
    run_id: str
    key: str
    node: str | None
    kind: str
    pool: str | None
    status: str
    attempt: int
    outputs: Any
    details: dict[str, Any] | None
    error: str | None
    started_at: float
    finished_at: float | None


@dataclass(frozen=True)
class StepRecord:
    """One change to a step: it started (again), finished with its outputs, or failed."""

    run_id: str
    key: str
    state: str  # running | succeeded | failed
    time: float
    kind: str | None = None
    node: str | None = None
    pool: str | None = None
    outputs: Any = None
    details: dict[str, Any] | None = None
    error: str | None = None


@dataclass(frozen=True)
class Event:
    id: int
    run_id: str
    time: float
    type: str
    data: dict[str, Any]


def default_url() -> str:
    if url := os.environ.get("HETAGENT_DB"):
        return url
    path = Path.home() / ".local" / "share" / "hetagent" / "runs.db"
    return f"sqlite:///{path}"


class RunStore:
    """The run database; safe to share between the threads of one process and between
    processes (SQLite serializes writers; PostgreSQL is made for it)."""

    def __init__(self, url: str | None = None):
        self.url = url or default_url()
        self.engine = _connect(self.url)
        try:
            metadata.create_all(self.engine)
        except OperationalError as error:
            raise StoreError(f"cannot open the run database {self.url}: {error.orig}") from None

    def close(self) -> None:
        self.engine.dispose()

    # -- agents ---------------------------------------------------------------------------

    def put_agent(self, tenant: str, name: str, document: dict[str, Any]) -> None:
        """Store (or replace) an agent's document under its name."""
        now = time.time()
        with self.engine.begin() as db:
            found = db.execute(
                select(agents.c.name).where(agents.c.tenant == tenant, agents.c.name == name)
            ).first()
            if found:
                db.execute(
                    update(agents)
                    .where(agents.c.tenant == tenant, agents.c.name == name)
                    .values(document=document, updated_at=now)
                )
            else:
                db.execute(
                    insert(agents).values(
                        tenant=tenant, name=name, document=document, created_at=now, updated_at=now
                    )
                )

    def get_agent(self, tenant: str, name: str) -> dict[str, Any] | None:
        with self.engine.connect() as db:
            row = db.execute(
                select(agents.c.document).where(agents.c.tenant == tenant, agents.c.name == name)
            ).first()
        return row[0] if row else None

    def list_agents(self, tenant: str) -> list[str]:
        with self.engine.connect() as db:
            rows = db.execute(
                select(agents.c.name).where(agents.c.tenant == tenant).order_by(agents.c.name)
            )
            return [row[0] for row in rows]

    # -- runs -----------------------------------------------------------------------------

    def create_run(
        self,
        agent: str,
        plan: dict[str, Any],
        inputs: dict[str, Any],
        *,
        tenant: str = "default",
        options: dict[str, Any] | None = None,
        run_id: str | None = None,
    ) -> str:
        run_id = run_id or uuid.uuid4().hex
        now = time.time()
        with self.engine.begin() as db:
            db.execute(
                insert(runs).values(
                    id=run_id,
                    tenant=tenant,
                    agent=agent,
                    plan=plan,
                    inputs=inputs,
                    options=options or {},
                    status="pending",
                    created_at=now,
                    updated_at=now,
                )
            )
            _event(db, run_id, "run.created", {"agent": agent})
        return run_id

    def get_run(self, run_id: str) -> Run | None:
        with self.engine.connect() as db:
            row = db.execute(select(runs).where(runs.c.id == run_id)).mappings().first()
        return Run(**row) if row else None

    def list_runs(
        self, tenant: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[Run]:
        query = select(runs).order_by(runs.c.created_at.desc()).limit(limit)
        if tenant is not None:
            query = query.where(runs.c.tenant == tenant)
        if status is not None:
            query = query.where(runs.c.status == status)
        with self.engine.connect() as db:
            return [Run(**row) for row in db.execute(query).mappings()]

    def set_status(
        self,
        run_id: str,
        status: str,
        *,
        outputs: dict[str, Any] | None = None,
        error: str | None = None,
        trace_id: str | None = None,
    ) -> bool:
        """Move an unfinished run to `status`; False (and nothing written) if it had already
        finished, e.g. cancelled by another process meanwhile."""
        if status not in RUN_STATES:
            raise ValueError(f"unknown run status {status!r}; one of {', '.join(RUN_STATES)}")
        values: dict[str, Any] = {"status": status, "updated_at": time.time()}
        if outputs is not None:
            values["outputs"] = outputs
        if error is not None:
            values["error"] = error
        if trace_id is not None:
            values["trace_id"] = trace_id
        with self.engine.begin() as db:
            changed = db.execute(
                update(runs)
                .where(runs.c.id == run_id, runs.c.status.in_(UNFINISHED))
                .values(**values)
            ).rowcount
            if changed:
                data = {"status": status} | ({"error": error} if error else {})
                _event(db, run_id, f"run.{status}", data)
        return bool(changed)

    def cancel(self, run_id: str) -> bool:
        """Mark an unfinished run cancelled (its executor stops at its next step); False if it
        had already finished."""
        with self.engine.begin() as db:
            changed = db.execute(
                update(runs)
                .where(runs.c.id == run_id, runs.c.status.in_(UNFINISHED))
                .values(status="cancelled", updated_at=time.time())
            ).rowcount
            if changed:
                _event(db, run_id, "run.cancelled", {"status": "cancelled"})
        return bool(changed)

    def claim_unfinished(self, owner: str) -> list[Run]:
        """The unfinished runs, now owned by `owner`: what a (re)started process resumes."""
        with self.engine.begin() as db:
            db.execute(
                update(runs)
                .where(runs.c.status.in_(UNFINISHED))
                .values(owner=owner, updated_at=time.time())
            )
            rows = db.execute(
                select(runs).where(runs.c.status.in_(UNFINISHED), runs.c.owner == owner)
            ).mappings()
            return [Run(**row) for row in rows]

    # -- steps ----------------------------------------------------------------------------

    def record_steps(self, records: list[StepRecord]) -> None:
        """Apply step changes in one transaction (the runtime writes its steps behind the runs,
        many to a commit): each step's changes fold into one row write, all rows in one
        statement. A finished step stays finished with its first outputs."""
        if not records:
            return
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for r in records:  # fold each step's changes, in order
            row = rows.setdefault(
                (r.run_id, r.key),
                {"run_id": r.run_id, "key": r.key, "kind": "", "node": None, "pool": None,
                 "attempt": 0, "started_at": r.time, "outputs": None, "details": None,
                 "error": None, "finished_at": None},
            )  # fmt: skip
            if r.state == "running":
                row.update(kind=r.kind, node=r.node, pool=r.pool, started_at=r.time, error=None)
                row["attempt"] += 1
                row["finished_at"] = None
            elif r.state == "succeeded":
                _check_json(r.outputs, f"outputs of step {r.key}")
                row.update(outputs=r.outputs, details=r.details, finished_at=r.time)
            elif r.state == "failed":
                row.update(error=r.error, finished_at=r.time)
            else:
                raise ValueError(f"unknown step state {r.state!r}")
            row["status"] = r.state
        upsert = _STEP_UPSERT
        happened = [
            {"run_id": r.run_id, "time": r.time, "type": f"step.{r.state}", "data": _data(r)}
            for r in records
        ]
        with self.engine.begin() as db:
            db.execute(upsert, list(rows.values()))
            db.execute(insert(events), happened)

    def finished_steps(self, run_id: str) -> dict[str, Any]:
        """key -> outputs of every finished step of the run: what a resumed run skips."""
        with self.engine.connect() as db:
            rows = db.execute(
                select(steps.c.key, steps.c.outputs).where(
                    steps.c.run_id == run_id, steps.c.status == "succeeded"
                )
            )
            return {row.key: row.outputs for row in rows}

    def steps(self, run_id: str) -> list[Step]:
        with self.engine.connect() as db:
            rows = db.execute(
                select(steps).where(steps.c.run_id == run_id).order_by(steps.c.started_at)
            ).mappings()
            return [Step(**row) for row in rows]

    # -- events ---------------------------------------------------------------------------

    def events(self, run_id: str, after: int = 0) -> list[Event]:
        """The run's events with an id above `after`, oldest first (to follow a run live)."""
        with self.engine.connect() as db:
            rows = db.execute(
                select(events)
                .where(events.c.run_id == run_id, events.c.id > after)
                .order_by(events.c.id)
            ).mappings()
            return [Event(**row) for row in rows]

    def iter_all_events(self, after: int = 0) -> Iterator[Event]:
        with self.engine.connect() as db:
            rows = db.execute(select(events).where(events.c.id > after).order_by(events.c.id))
            for row in rows.mappings():
                yield Event(**row)


def _data(record: StepRecord) -> dict[str, Any]:
    """What a step event tells a follower of the run."""
    data: dict[str, Any] = {"key": record.key}
    if record.state == "running":
        data |= {"node": record.node, "pool": record.pool}
    elif record.state == "succeeded":
        data["details"] = record.details or {}
    else:
        data["error"] = record.error
    return data


def _event(db, run_id: str, type: str, data: dict[str, Any]) -> None:
    db.execute(insert(events).values(run_id=run_id, time=time.time(), type=type, data=data))


def _check_json(value: Any, what: str) -> None:
    """Outputs must survive the database as they are; say which value would not."""
    try:
        json.dumps(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what} cannot be stored: {error}") from None


def _connect(url: str) -> Engine:
    try:
        if url.startswith("sqlite"):
            database = url.split("///", 1)[1] if "///" in url else ""
            if database and database != ":memory:":
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            options: dict[str, Any] = {"connect_args": {"timeout": 30, "check_same_thread": False}}
            if database in ("", ":memory:"):  # one connection, or each thread sees its own db
                options["poolclass"] = StaticPool
            engine = create_engine(url, **options)
            event.listen(engine, "connect", _sqlite_pragmas)
            return engine
        return create_engine(url, pool_pre_ping=True)
    except (ArgumentError, ImportError) as error:
        raise StoreError(
            f"cannot use the run database URL {url!r}: {error}; use sqlite:///PATH or "
            "postgresql+psycopg://USER:PASSWORD@HOST/DB"
        ) from None


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    # a committed step survives a killed process; only a power cut can lose the last ones
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


__all__ = ["Event", "Run", "RunStore", "Step", "StepRecord", "StoreError", "default_url"]
