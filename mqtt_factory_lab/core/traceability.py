"""Lesson 07's instruments, pytest-free: the chocolate line's records and the data center's database.

The chapter (``labs/07_traceability.py``) holds the concept and the experiments; this module
what they read and build:

* :func:`topic_of` and :func:`record` — a topic and a schema-valid payload of one of the
  line's machines, for the experiments that publish by hand;
* :class:`Database` — the data center's SQLite file, read the way the lab grades it (its two
  contract tables, opened read-only so the lab never holds a lock the data center waits on);
* :class:`ProductionRun` and :func:`forward_truth` — one run of the solution's line as seen
  on the wire, and the finished lots a raw lot went into according to its batch events (the
  answer a recall query must give).
"""

from __future__ import annotations

import copy
import json
import sqlite3
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mqtt_factory_lab.brokers import Broker
from mqtt_factory_lab.contract import PayloadError, schema, validate, validate_message
from mqtt_factory_lab.core.client import ReceivedMessage, RecordingClient
from mqtt_factory_lab.core.factory import FactoryLauncher
from mqtt_factory_lab.core.roles import RoleProcess

SITE, LINE = "tunis-01", "line-a"
#: a machine of each step, for the experiments that publish by hand
MACHINE = {"s4_conching": "conche-01", "s5_tempering": "temper-01", "s8_packaging": "packer-03"}
#: plant seconds per wall second: a batch (about 11 plant hours) in about half a second
FAST = 80000


def topic_of(root: str, step: str, machine: str, message_type: str) -> str:
    """``<root>/<site>/<line>/<step>/<machine>/<message_type>``, the line's topic layout."""
    return f"{root}/{SITE}/{LINE}/{step}/{machine}/{message_type}"


def record(message_type: str, step: str, *, check: bool = True, **changes: Any) -> dict[str, Any]:
    """A chocolate payload of ``step``'s machine (the schema's own example, a fresh msg_id
    and ts, then ``changes``); checked against its schema unless ``check=False``."""
    name = {"batch": "chocolate_batch"}.get(message_type, f"chocolate_{message_type}")
    payload = copy.deepcopy(schema(name)["examples"][0])
    payload.update(
        ts=time.time(), msg_id=f"lab-{uuid.uuid4().hex[:12]}", step=step, machine=MACHINE[step]
    )
    payload.update(changes)
    return validate(name, payload) if check else payload


def msg_id_of(payload: bytes | str) -> str | None:
    """The ``msg_id`` of a JSON object payload (the idempotency key), or None."""
    try:
        document = json.loads(payload)
    except (ValueError, TypeError):
        return None
    return document.get("msg_id") if isinstance(document, dict) else None


def qos1_ids(messages: Iterable[ReceivedMessage]) -> set[str]:
    """The msg_ids of the QoS 1 messages: the records a data center must store."""
    return {i for m in messages if m.qos == 1 and (i := msg_id_of(m.payload)) is not None}


def watch(client: RecordingClient, root: str) -> RecordingClient:
    """Record everything under ``root`` *as published*: QoS 2 keeps the publisher's QoS, and
    retain-as-published (MQTT 5) keeps its retain flag even on live messages."""
    client.subscribe(f"{root}/#", qos=2, retain_as_published=True)
    return client


class Database:
    """The data center's SQLite file, read the way the lab grades it: the two contract tables.

    Opened read-only for each query, so the lab never holds a lock the data center waits on.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def _rows(self, sql: str) -> list[tuple[Any, ...]] | None:
        if not self.path.exists():
            return None
        try:
            connection = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
            try:
                return connection.execute(sql).fetchall()
            finally:
                connection.close()
        except sqlite3.OperationalError:
            return None  # no such table yet, or busy: not ready

    def has_table(self, table: str) -> bool:
        rows = self._rows(f"SELECT name FROM sqlite_master WHERE type='table' AND name='{table}'")
        return bool(rows)

    def messages(self) -> list[tuple[str, Any, int]]:
        """``(topic, payload, qos)`` of every row of ``mqtt_messages``."""
        return self._rows("SELECT topic, payload, qos FROM mqtt_messages") or []

    def msg_ids(self) -> Counter[str]:
        """How many rows of ``mqtt_messages`` hold each msg_id."""
        return Counter(
            i for i in (msg_id_of(payload) for _, payload, _ in self.messages()) if i is not None
        )

    def dead_letters(self) -> list[tuple[str, bytes, str]]:
        """``(topic, payload as bytes, reason)`` of every row of ``dead_letters``."""
        rows = self._rows("SELECT topic, payload, reason FROM dead_letters") or []
        return [
            (topic, payload.encode() if isinstance(payload, str) else bytes(payload), reason)
            for topic, payload, reason in rows
        ]

    def describe(self) -> str:
        """What the database holds, in one sentence for a failure message."""
        if not self.path.exists():
            return f"the data center never created its database {self.path}"
        missing = [t for t in ("mqtt_messages", "dead_letters") if not self.has_table(t)]
        if missing:
            return f"its database {self.path} has no table {' or '.join(missing)}"
        return f"its database holds {len(self.messages())} message(s)"


def valid_or_reason(message: ReceivedMessage, root: str) -> dict[str, Any] | str:
    """The validated payload of ``message``, or why it breaks its schema."""
    try:
        return validate_message(message.topic, message.payload, root=root)
    except PayloadError as error:
        return str(error)


@dataclass
class ProductionRun:
    """Everything one run of the solution's line produced, and what its data center stored."""

    root: str
    broker: Broker
    launcher: FactoryLauncher
    database: Database
    datacenter: RoleProcess
    line: RoleProcess
    messages: list[ReceivedMessage]
    batches: int
    tmp: Path
    problems: list[str] = field(default_factory=list)

    def of_type(self, message_type: str) -> list[ReceivedMessage]:
        return [m for m in self.messages if m.topic.endswith("/" + message_type)]

    def batch_events(self) -> dict[str, list[dict[str, Any]]]:
        """Valid batch events by batch id, in the order they were published."""
        events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for message in self.of_type("batch"):
            with_errors = valid_or_reason(message, self.root)
            if isinstance(with_errors, dict):
                events[with_errors["batch_id"]].append(with_errors)
        return events

    def quality(self, batch_id: str) -> list[dict[str, Any]]:
        """The valid quality results published for ``batch_id``."""
        results = []
        for message in self.of_type("quality"):
            payload = valid_or_reason(message, self.root)
            if isinstance(payload, dict) and payload["batch_id"] == batch_id:
                results.append(payload)
        return results


def last_packaging_outputs(events: list[dict[str, Any]]) -> set[str]:
    """The lots the last packaging attempt of a batch produced (earlier attempts were reworked)."""
    packed = [e for e in events if e["event"] == "step_completed" and e["step"] == "s8_packaging"]
    return {lot["lot"] for lot in packed[-1]["outputs"]} if packed else set()


def forward_truth(run: ProductionRun, lot: str) -> set[str]:
    """The finished lots made from ``lot``, from the batch events seen on the wire."""
    consumed_by: dict[str, set[tuple[str, str, int]]] = defaultdict(set)
    produced_by: dict[tuple[str, str, int], set[str]] = defaultdict(set)
    material: dict[str, str] = {}
    for events in run.batch_events().values():
        for e in events:
            key = (e["batch_id"], e["step"], e["attempt"])
            for item in e.get("inputs", []):
                consumed_by[item["lot"]].add(key)
            for item in e.get("outputs", []):
                produced_by[key].add(item["lot"])
                material[item["lot"]] = item["material"]
    seen, todo = {lot}, [lot]
    while todo:
        for key in consumed_by.get(todo.pop(), ()):
            for made in produced_by.get(key, ()):
                if made not in seen:
                    seen.add(made)
                    todo.append(made)
    return {x for x in seen if material.get(x) == "finished_chocolate"}
