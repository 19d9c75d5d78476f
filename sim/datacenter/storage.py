"""The data center's SQLite database: every message, the dead letters, and the traceability tables.

Tables (the first two are the contract a student's data center shares with the lab):

``mqtt_messages``    every accepted message as it arrived: topic, payload, QoS, retain,
                     receive time, and ``msg_key``, the idempotency key (UNIQUE)
``dead_letters``     every rejected message: topic, payload, ``reason``; never dropped
``batches``, ``step_executions``, ``lots``, ``lot_consumption``, ``quality_results``,
``alarms``, ``shipments``, ``shipment_lots``, ``machine_states``
                     the same facts normalised, so a trace is a few indexed queries

Why it cannot lose or double a record:

* :meth:`Store.ingest` stores a list of messages in **one transaction**; the caller
  acknowledges them to the broker only after it returns (commit done). A crash before
  the commit loses nothing: the broker still has the unacknowledged messages and sends
  them again.
* The idempotency key is the payload's ``msg_id`` (or, without one, a SHA-256 of topic
  and payload). ``INSERT OR IGNORE`` on the UNIQUE key makes a redelivery a no-op, and
  the normalised rows are only written when the raw row is new.
* WAL mode: readers (trace) never block the writer. ``synchronous=NORMAL`` is durable
  against a killed *process* (what ``kill -9`` does); ``--durable`` (FULL) also against
  a power cut, at the cost of an fsync per commit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from sim.datacenter.contract import Accepted, Rejected, check

log = logging.getLogger("sim.datacenter")

SCHEMA = """
CREATE TABLE IF NOT EXISTS mqtt_messages (
    id INTEGER PRIMARY KEY,
    msg_key TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    site TEXT, line TEXT, step TEXT, machine TEXT, message_type TEXT,
    schema_version INTEGER,
    payload TEXT NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    dup INTEGER NOT NULL DEFAULT 0,
    received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    msg_key TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    reason TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    recipe TEXT,
    site TEXT, line TEXT,
    started_ts REAL,
    planned_kg REAL,
    scrapped_ts REAL,
    scrapped_reason TEXT
);
CREATE TABLE IF NOT EXISTS step_executions (
    batch_id TEXT NOT NULL,
    step TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    machine TEXT,
    started_ts REAL,
    completed_ts REAL,
    quantity_in REAL,
    quantity_out REAL,
    loss REAL,
    parameters TEXT,
    rework_reason TEXT,
    schema_version INTEGER,
    PRIMARY KEY (batch_id, step, attempt)
);
CREATE TABLE IF NOT EXISTS lots (
    lot TEXT PRIMARY KEY,
    material TEXT,
    quantity REAL,
    unit TEXT,
    batch_id TEXT,
    step TEXT,
    attempt INTEGER,
    created_ts REAL
);
CREATE INDEX IF NOT EXISTS lots_by_execution ON lots (batch_id, step, attempt);
CREATE TABLE IF NOT EXISTS lot_consumption (
    batch_id TEXT NOT NULL,
    step TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    lot TEXT NOT NULL,
    quantity REAL,
    PRIMARY KEY (batch_id, step, attempt, lot)
);
CREATE INDEX IF NOT EXISTS consumption_by_lot ON lot_consumption (lot);
CREATE TABLE IF NOT EXISTS quality_results (
    msg_key TEXT PRIMARY KEY,
    batch_id TEXT NOT NULL,
    step TEXT, machine TEXT, attempt INTEGER,
    check_name TEXT, value REAL, unit TEXT, low REAL, high REAL,
    result TEXT NOT NULL, action TEXT, ts REAL
);
CREATE INDEX IF NOT EXISTS quality_by_batch ON quality_results (batch_id);
CREATE TABLE IF NOT EXISTS alarms (
    msg_key TEXT PRIMARY KEY,
    site TEXT, line TEXT, step TEXT, machine TEXT NOT NULL,
    alarm TEXT, state TEXT, severity TEXT, value REAL, batch_id TEXT, message TEXT,
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS alarms_by_machine ON alarms (machine, ts);
CREATE TABLE IF NOT EXISTS shipments (
    shipment_id TEXT PRIMARY KEY,
    destination TEXT,
    ts REAL
);
CREATE TABLE IF NOT EXISTS shipment_lots (
    shipment_id TEXT NOT NULL,
    lot TEXT NOT NULL,
    quantity REAL,
    unit TEXT,
    batch_id TEXT,
    PRIMARY KEY (shipment_id, lot)
);
CREATE INDEX IF NOT EXISTS shipments_by_lot ON shipment_lots (lot);
CREATE TABLE IF NOT EXISTS machine_states (
    machine TEXT PRIMARY KEY,
    site TEXT, line TEXT, step TEXT,
    state TEXT, batch_id TEXT, reason TEXT, ts REAL
);
"""


class Incoming(NamedTuple):
    """One message as it came off the wire (paho's ``mid`` is kept for the acknowledgement).

    A named tuple, not a dataclass: paho's network thread makes one per message, and a
    tuple is the cheapest immutable record Python has.
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool
    received_at: float
    dup: bool = False
    mid: int = 0


@dataclass
class IngestResult:
    stored: int = 0
    duplicates: int = 0
    dead_letters: int = 0


def idempotency_key(topic: str, payload: bytes, document: dict[str, Any] | None = None) -> str:
    """The payload's ``msg_id`` when it has one, else a hash of topic and payload.

    The hash alone would merge two genuinely different readings with equal contents;
    the line's ``msg_id`` is unique per message and identical on every redelivery.
    """
    if document is not None and isinstance(document.get("msg_id"), str):
        return "id:" + document["msg_id"]
    digest = hashlib.sha256(topic.encode() + b"\0" + payload).hexdigest()
    return "sha256:" + digest


def connect(
    path: str | Path, *, durable: bool = False, readonly: bool = False
) -> sqlite3.Connection:
    """Open the database (WAL, foreign-key free, 60 s busy timeout), creating the tables."""
    if readonly:
        connection = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True, timeout=60)
        connection.row_factory = sqlite3.Row
        return connection
    connection = sqlite3.connect(str(path), timeout=60, isolation_level=None)
    connection.row_factory = sqlite3.Row
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
    connection.executescript(SCHEMA)
    return connection


class Store:
    """Writes messages into the database, idempotently, one transaction per call.

    :param path: the SQLite file (created if missing).
    :param root: the topic root the line publishes under.
    :param durable: fsync every commit (``synchronous=FULL``).
    """

    def __init__(self, path: str | Path, root: str = "factory", *, durable: bool = False) -> None:
        self.path = Path(path)
        self.root = root
        self.db = connect(path, durable=durable)

    def close(self) -> None:
        self.db.close()

    def ingest(self, messages: Sequence[Incoming]) -> IngestResult:
        """Store ``messages`` in one transaction; on return they are committed.

        A message that breaks the contract goes to ``dead_letters`` with its reason; one
        that makes the normalisation fail (a bug, or data no schema foresaw) too, after
        its partial rows are rolled back. Only a database failure (disk full, locked
        beyond the timeout) raises, and then nothing of the call is committed, so the
        caller must not acknowledge anything.
        """
        result = IngestResult()
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            for message in messages:
                self._one(message, result)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return result

    def _one(self, message: Incoming, result: IngestResult) -> None:
        db = self.db
        try:
            accepted = check(message.topic, message.payload, self.root)
        except Rejected as error:
            self._dead_letter(message, str(error), result)
            return
        key = idempotency_key(message.topic, message.payload, accepted.payload)
        if accepted.message_type == "telemetry":
            # Telemetry is one row and nothing else: a single INSERT is atomic on its own,
            # so it needs no savepoint (two statements fewer for most of the stream).
            try:
                self._insert_raw(key, message, accepted, result)
            except sqlite3.OperationalError:
                raise  # the database itself is failing: nothing may be acknowledged
            except Exception as error:  # nothing was written: keep it, say why
                log.exception("could not store %s", message.topic)
                self._dead_letter(message, f"could not be stored: {error!r}", result)
            return
        db.execute("SAVEPOINT message")
        try:
            if self._insert_raw(key, message, accepted, result):
                _normalise(db, key, accepted)
            db.execute("RELEASE message")
        except sqlite3.OperationalError:
            db.execute("ROLLBACK TO message")
            db.execute("RELEASE message")
            raise  # the database itself is failing: nothing may be acknowledged
        except Exception as error:  # data the code did not foresee: keep it, say why
            db.execute("ROLLBACK TO message")
            db.execute("RELEASE message")
            result.stored -= 1  # counted by _insert_raw, then rolled back
            log.exception("could not normalise %s", message.topic)
            self._dead_letter(message, f"could not be stored: {error!r}", result)

    def _insert_raw(
        self, key: str, message: Incoming, accepted: Accepted, result: IngestResult
    ) -> bool:
        """Insert the raw row; True if it is new (counted stored), False if a duplicate."""
        cursor = self.db.execute(
            "INSERT OR IGNORE INTO mqtt_messages (msg_key, topic, site, line, step, machine,"
            " message_type, schema_version, payload, qos, retain, dup, received_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                key,
                message.topic,
                accepted.site,
                accepted.line,
                accepted.step,
                accepted.machine,
                accepted.message_type,
                accepted.schema_version,
                message.payload.decode("utf-8"),
                message.qos,
                int(message.retain),
                int(message.dup),
                message.received_at,
            ),
        )
        if cursor.rowcount == 0:
            result.duplicates += 1
            return False
        result.stored += 1
        return True

    def _dead_letter(self, message: Incoming, reason: str, result: IngestResult) -> None:
        key = idempotency_key(message.topic, message.payload)
        cursor = self.db.execute(
            "INSERT OR IGNORE INTO dead_letters (msg_key, topic, payload, qos, retain, reason,"
            " received_at) VALUES (?,?,?,?,?,?,?)",
            (
                key,
                message.topic,
                message.payload,
                message.qos,
                int(message.retain),
                reason,
                message.received_at,
            ),
        )
        if cursor.rowcount:
            result.dead_letters += 1
            log.warning("dead letter from %s: %s", message.topic, reason)
        else:
            result.duplicates += 1


# -- normalisation ------------------------------------------------------------------------


def _normalise(db: sqlite3.Connection, key: str, message: Accepted) -> None:
    payload = message.payload
    kind = message.message_type
    if kind == "batch":
        _batch_event(db, message)
    elif kind == "quality":
        _ensure_batch(db, payload["batch_id"], payload["recipe"], message)
        db.execute(
            "INSERT OR IGNORE INTO quality_results (msg_key, batch_id, step, machine, attempt,"
            " check_name, value, unit, low, high, result, action, ts)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                key,
                payload["batch_id"],
                message.step,
                message.machine,
                payload["attempt"],
                payload["check"],
                payload["value"],
                payload["unit"],
                payload["low"],
                payload["high"],
                payload["result"],
                payload["action"],
                payload["ts"],
            ),
        )
    elif kind == "alarm":
        db.execute(
            "INSERT OR IGNORE INTO alarms (msg_key, site, line, step, machine, alarm, state,"
            " severity, value, batch_id, message, ts) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                key,
                message.site,
                message.line,
                message.step,
                message.machine,
                payload["alarm"],
                payload["state"],
                payload["severity"],
                payload["value"],
                payload.get("batch_id"),
                payload["message"],
                payload["ts"],
            ),
        )
    elif kind == "state" and not payload:
        db.execute("DELETE FROM machine_states WHERE machine = ?", (message.machine,))
    elif kind == "state":
        db.execute(
            "INSERT INTO machine_states (machine, site, line, step, state, batch_id, reason, ts)"
            " VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (machine) DO UPDATE SET"
            " state = excluded.state, batch_id = excluded.batch_id, reason = excluded.reason,"
            " ts = excluded.ts WHERE excluded.ts >= machine_states.ts",
            (
                message.machine,
                message.site,
                message.line,
                message.step,
                payload["state"],
                payload.get("batch_id"),
                payload.get("reason"),
                payload["ts"],
            ),
        )
    # telemetry lives in mqtt_messages only


def _ensure_batch(db: sqlite3.Connection, batch_id: str, recipe: str, message: Accepted) -> None:
    db.execute(
        "INSERT OR IGNORE INTO batches (batch_id, recipe, site, line) VALUES (?,?,?,?)",
        (batch_id, recipe, message.site, message.line),
    )


def _lots(payload: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """Version 2 lots as they are; version 1 bare codes become lots without material/quantity."""
    if payload.get("schema_version") == 2:
        return list(payload.get(key, []))
    legacy = {"inputs": "lots_in", "outputs": "lots_out"}[key]
    codes = payload.get(legacy, [])
    total = payload.get("qty_out_kg") if key == "outputs" else payload.get("qty_in_kg")
    only = total if len(codes) == 1 else None
    return [{"lot": code, "material": None, "quantity": only, "unit": "kg"} for code in codes]


def _batch_event(db: sqlite3.Connection, message: Accepted) -> None:
    payload = message.payload
    v2 = message.schema_version == 2
    batch_id, event, ts = payload["batch_id"], payload["event"], payload["ts"]
    attempt = payload.get("attempt", 1)
    _ensure_batch(db, batch_id, payload["recipe"], message)
    execution = (batch_id, message.step, attempt)
    if event in ("step_started", "step_completed", "rework"):
        db.execute(
            "INSERT OR IGNORE INTO step_executions (batch_id, step, attempt, machine,"
            " schema_version) VALUES (?,?,?,?,?)",
            (*execution, message.machine, message.schema_version),
        )
    if event == "batch_started":
        db.execute(
            "UPDATE batches SET started_ts = ?, planned_kg = ? WHERE batch_id = ?",
            (ts, payload.get("planned_kg"), batch_id),
        )
    elif event == "step_started":
        quantity = payload.get("quantity_in") if v2 else payload.get("qty_in_kg")
        db.execute(
            "UPDATE step_executions SET started_ts = ?, quantity_in = ?, parameters = ?"
            " WHERE batch_id = ? AND step = ? AND attempt = ?",
            (ts, quantity, json.dumps(payload.get("parameters") or {}), *execution),
        )
        for lot in _lots(payload, "inputs"):
            db.execute(
                "INSERT OR IGNORE INTO lots (lot, material, unit) VALUES (?,?,?)",
                (lot["lot"], lot["material"], lot["unit"]),
            )
            db.execute(
                "INSERT OR IGNORE INTO lot_consumption (batch_id, step, attempt, lot, quantity)"
                " VALUES (?,?,?,?,?)",
                (*execution, lot["lot"], lot["quantity"]),
            )
    elif event == "step_completed":
        quantity = payload.get("quantity_out") if v2 else payload.get("qty_out_kg")
        db.execute(
            "UPDATE step_executions SET completed_ts = ?, quantity_out = ?, loss = ?"
            " WHERE batch_id = ? AND step = ? AND attempt = ?",
            (ts, quantity, payload.get("loss"), *execution),
        )
        for lot in _lots(payload, "outputs"):
            db.execute(
                "INSERT INTO lots (lot, material, quantity, unit, batch_id, step, attempt,"
                " created_ts) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (lot) DO UPDATE SET"
                " material = coalesce(excluded.material, material), quantity = excluded.quantity,"
                " batch_id = excluded.batch_id, step = excluded.step, attempt = excluded.attempt,"
                " created_ts = excluded.created_ts",
                (lot["lot"], lot["material"], lot["quantity"], lot["unit"], *execution, ts),
            )
    elif event == "rework":
        db.execute(
            "UPDATE step_executions SET rework_reason = ?"
            " WHERE batch_id = ? AND step = ? AND attempt = ?",
            (payload.get("reason"), *execution),
        )
    elif event == "scrapped":
        db.execute(
            "UPDATE batches SET scrapped_ts = ?, scrapped_reason = ? WHERE batch_id = ?",
            (ts, payload.get("reason"), batch_id),
        )
    elif event == "shipped" and isinstance(payload.get("shipment"), dict):
        shipment = payload["shipment"]
        db.execute(
            "INSERT OR IGNORE INTO shipments (shipment_id, destination, ts) VALUES (?,?,?)",
            (shipment["shipment_id"], shipment["destination"], ts),
        )
        for lot in shipment["lots"]:
            db.execute(
                "INSERT OR IGNORE INTO shipment_lots (shipment_id, lot, quantity, unit, batch_id)"
                " VALUES (?,?,?,?,?)",
                (shipment["shipment_id"], lot["lot"], lot["quantity"], lot["unit"], batch_id),
            )


def ingest_all(store: Store, messages: Iterable[Incoming], chunk: int = 1000) -> IngestResult:
    """Ingest many messages, ``chunk`` per transaction (tools and benchmarks)."""
    total = IngestResult()
    pending: list[Incoming] = []
    for message in messages:
        pending.append(message)
        if len(pending) >= chunk:
            _add(total, store.ingest(pending))
            pending = []
    if pending:
        _add(total, store.ingest(pending))
    return total


def _add(total: IngestResult, part: IngestResult) -> None:
    total.stored += part.stored
    total.duplicates += part.duplicates
    total.dead_letters += part.dead_letters
