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

import contextlib
import copy
import json
import sqlite3
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mqtt_factory_lab.brokers import Broker
from mqtt_factory_lab.brokers.mosquitto_log import pubacks_from, qos1_sent_to
from mqtt_factory_lab.contract import PayloadError, schema, validate, validate_message
from mqtt_factory_lab.core.client import ReceivedMessage, RecordingClient
from mqtt_factory_lab.core.factory import FactoryLauncher
from mqtt_factory_lab.core.process import ProcessTimeout, wait_until
from mqtt_factory_lab.core.roles import RoleError, RoleProcess

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


# -- The slow scenarios: a crash and a database that cannot commit ------------------------
#
# Each is one case of an experiment (one protocol), with its own client ids, topic root and
# database. They only wait (for a line, an outage, a grace window), so a lesson runs its
# cases side by side (:class:`SideBySide`) and the experiments judge what each one recorded.

#: seconds a data center has to acknowledge what it received (a PUBACK takes milliseconds);
#: a correct data center acknowledges nothing while its database is held, so the whole
#: window runs out: it proves an absence and must not shrink
PUBACK_GRACE = 3.0
#: records the lab publishes while it holds the data center's database
HELD_RECORDS = 10


def client_for(broker: Broker, client_id: str, protocol: str = "5") -> RecordingClient:
    """A connected recording client of ``broker`` (its listener for ``protocol``)."""
    settings = broker.connection.for_protocol(protocol)
    client = RecordingClient(
        settings.host,
        settings.port,
        client_id,
        protocol=protocol,
        describe_broker=broker.health,
        connection=settings,
    )
    client.connect()
    return client


class Scenario:
    """One case of a slow experiment: its launcher, database and clients, closed together."""

    def __init__(self, launcher: FactoryLauncher, tmp: Path) -> None:
        self.launcher = launcher
        self.broker = launcher.broker
        self.tmp = tmp
        self.database = Database(tmp / "datacenter.db")
        self.mark = self.broker.log_mark()  # a failure report shows the log from here
        self.run_id = uuid.uuid4().hex[:6]
        self.clients: list[RecordingClient] = []
        #: set when the module ends before the case did (Ctrl-C, ``-x``): its waits end at once
        self.abandoned = threading.Event()
        #: set once the case's programs are up (at the latest when :meth:`run` ends): what is
        #: left of it is waiting, so cases started after it (:class:`SideBySide`) may begin
        self.under_way = threading.Event()

    def client(self, name: str, protocol: str = "5") -> RecordingClient:
        client = client_for(self.broker, f"lab-{name}-{self.run_id}", protocol)
        self.clients.append(client)
        return client

    def start_datacenter(self, client_id: str) -> RoleProcess:
        return self.launcher.start_role("datacenter", client_id, db=self.database.path)

    def until(
        self, condition: Callable[[], object], timeout: float, interval: float = 0.02
    ) -> None:
        """Wait for ``condition``, at most ``timeout`` seconds: the experiment judges the rest."""
        with contextlib.suppress(ProcessTimeout):
            wait_until(condition, timeout, interval=interval, stop_early=self.abandoned.is_set)

    def wait(
        self, condition: Callable[[], object], timeout: float, failure: Callable[[], str]
    ) -> None:
        """Wait for ``condition``; past ``timeout``, the solution failed: :class:`RoleError`."""
        try:
            wait_until(condition, timeout, stop_early=self.abandoned.is_set)
        except ProcessTimeout:
            raise RoleError(failure()) from None

    def run(self) -> Scenario:  # pragma: no cover - each scenario says what it does
        raise NotImplementedError

    def abandon(self) -> None:
        """End the case early: its waits stop and its programs are stopped."""
        self.abandoned.set()
        self.launcher.close()

    def close(self) -> None:
        for client in self.clients:
            client.disconnect()
        self.launcher.close()


class Production(Scenario):
    """One production run of the solution: its data center, then a line of :attr:`BATCHES`
    batches at :data:`FAST`; :meth:`run` waits for the line to finish and the data center to
    store every record the observer saw (at most 15 s: the experiments judge what it has)."""

    #: three batches in a row cover white, milk and dark chocolate
    BATCHES = 4

    def run(self) -> Production:
        root = self.launcher.topic_root
        observer = watch(self.client("choc-observer"), root)
        datacenter = self.start_datacenter(f"datacenter-{self.run_id}")
        line = self.launcher.start_role(
            "chocolate_line",
            f"line-{self.run_id}",
            batches=self.BATCHES,
            time_scale=FAST,
            run_id=self.run_id,
        )
        self.under_way.set()  # the line runs on the plant's clock from here
        status = line.wait_exit(60)
        observer.sync()
        self.production = ProductionRun(
            root,
            self.broker,
            self.launcher,
            self.database,
            datacenter,
            line,
            observer.received(),
            self.BATCHES,
            self.database.path.parent,
        )
        if status != 0:
            self.production.problems.append(line.describe_failure(f"exited with status {status}"))
        expected = qos1_ids(self.production.messages)
        # the data center may still be committing the last records: the experiments judge
        # what it stored, so wait for all of them (or 15 s) before the first one looks
        self.until(lambda: expected <= set(self.database.msg_ids()), 15)
        return self


class KilledDatacenter(Scenario):
    """The solution's data center killed (SIGKILL) mid-production and started again.

    :meth:`run` starts the data center and a line of :attr:`BATCHES` batches; once the data
    center has stored 40 messages and the line has sent 15 more records, it kills the data
    center, lets the line publish (10 records and 10 readings) into the outage, restarts the
    data center on the same database and client id, and waits for the line to finish and the
    data center to store what the observer saw (at most 15 s: judged on what it has by then).
    """

    BATCHES = 3

    def run(self) -> KilledDatacenter:
        self.observer = watch(self.client("choc-observer"), self.launcher.topic_root)
        client_id = f"datacenter-{self.run_id}"
        self.first = self.start_datacenter(client_id)
        self.line = self.launcher.start_role(
            "chocolate_line",
            f"line-{self.run_id}",
            batches=self.BATCHES,
            time_scale=FAST / 2,
            run_id=self.run_id,
        )
        self.under_way.set()  # the line runs on the plant's clock from here
        self.wait(
            lambda: len(self.database.messages()) >= 40,
            20,
            lambda: self.first.describe_failure(
                f"stored fewer than 40 messages while the line ran ({self.database.describe()})"
            ),
        )
        # Kill it mid-stream: the line has sent more records since the last commit we saw.
        seen = len(qos1_ids(self.observer.received()))
        self.until(lambda: len(qos1_ids(self.observer.received())) >= seen + 15, 10)
        self.first.kill()  # SIGKILL: no goodbye, no last commit, no last acknowledgement
        during = len(self.observer.received())

        def outage_seen() -> bool:  # the line goes on publishing while it is dead
            sent = self.observer.received()[during:]
            return sum(m.qos == 0 for m in sent) >= 10 and len(qos1_ids(sent)) >= 10

        self.until(outage_seen, 10)
        self.start_datacenter(client_id)  # same client id, same database: the session resumes
        self.line_status = self.line.wait_exit(60)
        self.observer.sync()
        self.messages = self.observer.received()
        expected = qos1_ids(self.messages)
        # judged on what it stored by then
        self.until(lambda: expected <= set(self.database.msg_ids()), 15)
        self.stored = self.database.msg_ids()
        return self

    def states(self) -> set[str]:
        """The msg_ids of the machine states the line published (retained: sent again to
        every new subscription)."""
        return {
            i
            for m in self.messages
            if m.topic.endswith("/state") and (i := msg_id_of(m.payload)) is not None
        }

    def telemetry_gap(self) -> set[str]:
        """The msg_ids of the QoS 0 readings the line sent that the database does not hold."""
        sent = {i for m in self.messages if m.qos == 0 and (i := msg_id_of(m.payload))}
        return sent - set(self.stored)


class HeldDatabase(Scenario):
    """Records delivered to the solution's data center while the lab holds its database.

    :meth:`run` starts the data center, sees it store one batch event, takes the database's
    exclusive lock (nothing can be committed), publishes :data:`HELD_RECORDS` quality records,
    waits until the broker's log shows each sent to the data center, gives it
    :data:`PUBACK_GRACE` seconds to acknowledge, kills it, releases the lock and starts it
    again with the same client id. Then a marker record (behind every redelivery, in one
    queue) says when whatever was coming back has come. Needs the broker's log (``LOG``).
    """

    def __init__(self, launcher: FactoryLauncher, tmp: Path) -> None:
        super().__init__(launcher, tmp)
        self.client_id = f"datacenter-{self.run_id}"

    def _log(self) -> list[str]:
        return self.broker.log_lines()[self.lock_mark :]

    def sent_to_it(self) -> set[int]:
        """Packet ids of the QoS 1 publishes on the held topic the broker logged to it."""
        return qos1_sent_to(self._log(), self.client_id, self.topic)

    def acknowledged_by_it(self) -> set[int]:
        return pubacks_from(self._log(), self.client_id)

    def run(self) -> HeldDatabase:
        step, root = "s8_packaging", self.launcher.topic_root
        datacenter = self.start_datacenter(self.client_id)
        publisher = self.client("choc-publisher", self.launcher.protocol)
        first = record("batch", step)
        publisher.publish(topic_of(root, step, MACHINE[step], "batch"), first, qos=1)
        self.wait(
            lambda: self.database.msg_ids()[first["msg_id"]] > 0,
            10,
            lambda: datacenter.describe_failure(
                f"never stored a batch event ({self.database.describe()})"
            ),
        )
        self.under_way.set()  # what is left is mostly the PUBACK_GRACE window
        # The lab holds the database (an exclusive lock: no one else may write), so nothing
        # that arrives now can be committed. A data center that acknowledges only after its
        # commit sends no PUBACK; one that acknowledges on arrival does, for records it lacks.
        self.topic = topic_of(root, step, MACHINE[step], "quality")
        self.held = [record("quality", step, result="pass") for _ in range(HELD_RECORDS)]
        lock = sqlite3.connect(self.database.path, timeout=10, isolation_level=None)
        try:
            lock.execute("BEGIN EXCLUSIVE")
            self.lock_mark = self.broker.log_mark()
            for payload in self.held:
                publisher.publish(self.topic, payload, qos=1)
            self.wait(
                lambda: len(self.sent_to_it()) >= len(self.held),
                10,
                lambda: datacenter.describe_failure(
                    f"was not sent the {len(self.held)} records published on {self.topic} (the "
                    f"broker's log shows {len(self.sent_to_it())}): is it subscribed at QoS 1?"
                ),
            )
            sent = self.sent_to_it()
            # Whatever it acknowledges, it does so at once: give it the time a PUBACK takes.
            # (A correct data center lets the whole window run out: no need to reread the
            # broker's log 50 times a second meanwhile.)
            self.until(lambda: sent <= self.acknowledged_by_it(), PUBACK_GRACE, interval=0.1)
            self.acknowledged = sent & self.acknowledged_by_it()
            datacenter.kill()  # SIGKILL while the database is held: nothing of it committed
        finally:
            lock.rollback()
            lock.close()
        self.start_datacenter(self.client_id)  # the session resumes: unacknowledged ones return
        # A record published now comes after every redelivery of the session (one topic, one
        # queue, in order): once it is stored, whatever was coming back has come.
        marker = record("quality", step, result="pass")
        publisher.publish(self.topic, marker, qos=1)
        ids = {payload["msg_id"] for payload in self.held}
        self.until(
            lambda: ids <= set(got := self.database.msg_ids()) or got[marker["msg_id"]] > 0,
            15,
        )
        self.until(lambda: ids <= set(self.database.msg_ids()), 1)  # the marker's own batch
        self.lost = sorted(ids - set(self.database.msg_ids()))
        return self


class RedeliveredRecord(Scenario):
    """A batch event published twice, as a QoS 1 redelivery arrives, then a marker record.

    :meth:`run` waits until the data center has stored the marker (10 s, or
    :class:`RoleError`); :attr:`copies` is how many rows the event has by then.
    """

    def run(self) -> RedeliveredRecord:
        step = "s5_tempering"
        self.topic = topic_of(self.launcher.topic_root, step, MACHINE[step], "batch")
        datacenter = self.start_datacenter(f"datacenter-{self.run_id}")
        self.event, marker = record("batch", step), record("batch", step)
        publisher = self.client("choc-publisher")
        publisher.publish(self.topic, self.event, qos=1)
        publisher.publish(self.topic, self.event, qos=1)  # the same record again
        publisher.publish(self.topic, marker, qos=1)
        self.wait(
            lambda: self.database.msg_ids()[marker["msg_id"]] > 0,
            10,
            lambda: datacenter.describe_failure(
                f"never stored the batch events published on {self.topic} "
                f"({self.database.describe()})"
            ),
        )
        self.copies = self.database.msg_ids()[self.event["msg_id"]]
        return self


class DeadLetter(Scenario):
    """A malformed ``payload`` on a ``message_type`` topic, then a valid record.

    :meth:`run` waits (10 s) until the data center has stored the valid record or died;
    the experiment judges what :attr:`datacenter` and :attr:`database` show then.
    """

    def __init__(
        self, launcher: FactoryLauncher, tmp: Path, *, message_type: str, payload: bytes
    ) -> None:
        super().__init__(launcher, tmp)
        self.message_type, self.payload = message_type, payload

    def run(self) -> DeadLetter:
        step = "s8_packaging"
        self.topic = topic_of(self.launcher.topic_root, step, MACHINE[step], self.message_type)
        self.datacenter = self.start_datacenter(f"datacenter-{self.run_id}")
        self.good = record(self.message_type, step)
        publisher = self.client("choc-publisher")
        publisher.publish(self.topic, self.payload, qos=1)
        publisher.publish(self.topic, self.good, qos=1)
        self.until(lambda: self.stored_good() or not self.datacenter.is_running(), 10)
        return self

    def stored_good(self) -> bool:
        return self.database.msg_ids()[self.good["msg_id"]] > 0

    def letters(self) -> list[tuple[str, bytes, str]]:
        """The dead letters of the malformed payload's topic."""
        return [row for row in self.database.dead_letters() if row[0] == self.topic]

    def kept_as_record(self) -> bool:
        """Whether ``mqtt_messages`` holds the malformed payload as if it were a record."""
        return any(
            (p.encode() if isinstance(p, str) else p) == self.payload
            for t, p, _ in self.database.messages()
            if t == self.topic
        )


class KilledLine(Scenario):
    """The solution's line killed (SIGKILL) while it runs, a dashboard watching its states.

    :meth:`run` waits (10 s) until every machine the dashboard saw is stored ``offline``;
    :meth:`still_running` names those that are not.
    """

    def run(self) -> KilledLine:
        root = self.launcher.topic_root
        self.dashboard = self.client("choc-dashboard")
        self.dashboard.subscribe(f"{root}/+/+/+/+/state", qos=1)
        line = self.launcher.start_role(
            "chocolate_line",
            f"line-{self.run_id}",
            batches=1000,
            time_scale=600,
            run_id=self.run_id,
        )
        self.dashboard.sync()
        self.machines = {m.topic for m in self.dashboard.received()}
        if not self.machines:
            raise RoleError(
                line.describe_failure("published no machine state before it was killed")
            )
        line.kill()  # power cut: no machine says goodbye
        self.until(lambda: not self.still_running(), 10)
        return self

    def still_running(self) -> list[str]:
        """The machines whose last state is not ``offline``."""
        last = {m.topic: m.json() for m in self.dashboard.received()}
        return sorted(
            t.rsplit("/", 2)[-2] for t in self.machines if last[t].get("state") != "offline"
        )


class Recall(Scenario):
    """The solution's recall query (its ``trace`` role) over the module's production run.

    :meth:`run` waits for the run (``production``), picks the first lot of ``raw_material``
    its batches consumed (:attr:`lot`, None if there is none), runs the query and keeps its
    exit status and :attr:`answer_file`; :attr:`truth` is what the batch events say.
    """

    def __init__(
        self,
        launcher: FactoryLauncher,
        tmp: Path,
        *,
        raw_material: str,
        production: Callable[[], Production],
    ) -> None:
        super().__init__(launcher, tmp)
        self.raw_material, self.production = raw_material, production

    def run(self) -> Recall:
        run = self.production().production
        lots = sorted(
            {
                item["lot"]
                for events in run.batch_events().values()
                for e in events
                for item in e.get("inputs", [])
                if item["material"] == self.raw_material
            }
        )
        self.lot = lots[0] if lots else None
        if self.lot is None:
            return self
        self.truth = forward_truth(run, self.lot)
        self.answer_file = self.tmp / f"recall-{self.lot}.json"
        self.trace = run.launcher.start_role(
            "trace",
            f"trace-{self.raw_material}",
            wait_ready=False,
            db=run.database.path,
            lot=self.lot,
            output=self.answer_file,
        )
        self.status = self.trace.wait_exit(30)
        return self

    def answer(self) -> set[str]:
        """The ``finished_lots`` the query wrote."""
        return set(json.loads(self.answer_file.read_text())["finished_lots"])


#: seconds a case started ``after`` others waits for them at most (:class:`SideBySide`)
AFTER_AT_MOST = 10.0


class SideBySide:
    """Runs scenarios at once, each in its own thread, and hands each its finished case.

    A slow experiment mostly waits (a line, an outage, a grace window that must run out), so
    its cases need not wait one after the other. At most ``at_once`` run at a time (the
    others queue, in the order they were started), so that a long list of cases (the slow
    lane repeats each twenty times) does not starve the machine. :meth:`start` starts a case
    if it is not running yet, :meth:`result` waits for it and re-raises what went wrong in it, :meth:`close`
    waits for every case and closes its programs and clients.

    A short case may start ``after`` longer ones: it begins once their programs are up
    (:attr:`Scenario.under_way`), so that the long cases' start-ups, the part of them that
    needs the CPU, do not queue behind its own; it still ends long before them.
    """

    def __init__(self, at_once: int = 8) -> None:
        self._pool = ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="side-by-side")
        self._cases: dict[Hashable, tuple[Scenario, Future[Scenario]]] = {}
        # every case closes at once: a program takes up to a tenth of a second to stop
        self._closer = ThreadPoolExecutor(
            max_workers=2 * at_once, thread_name_prefix="side-by-side-close"
        )
        self._closing: dict[Hashable, Future[None]] = {}
        self._lock = threading.Lock()

    def start(
        self, key: Hashable, make: Callable[[], Scenario], *, after: Iterable[Hashable] = ()
    ) -> None:
        """Start the case ``make()`` under ``key`` unless it runs already; once the cases
        under the keys ``after`` are under way (or :data:`AFTER_AT_MOST` seconds)."""
        with self._lock:
            if key not in self._cases:
                case = make()
                earlier = [self._cases[k][0] for k in after if k in self._cases]
                self._cases[key] = (case, self._pool.submit(self._run, case, earlier))

    @staticmethod
    def _run(case: Scenario, earlier: list[Scenario]) -> Scenario:
        for other in earlier:
            gate = getattr(other, "under_way", None)
            if gate is not None:
                gate.wait(AFTER_AT_MOST)
        abandoned = getattr(case, "abandoned", None)
        if isinstance(abandoned, threading.Event) and abandoned.is_set():
            return case  # the module ended while it waited: nothing to start
        try:
            return case.run()
        finally:
            under_way = getattr(case, "under_way", None)
            if under_way is not None:
                under_way.set()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._cases

    def started(self) -> list[Hashable]:
        """The keys of the cases started so far, in the order they were started."""
        with self._lock:
            return list(self._cases)

    def case(self, key: Hashable) -> Scenario:
        """The case started under ``key`` (running or not)."""
        return self._cases[key][0]

    def result(self, key: Hashable, timeout: float = 120) -> Scenario:
        """The finished case; raises what its :meth:`Scenario.run` raised."""
        return self._cases[key][1].result(timeout)

    def finish(self, key: Hashable) -> None:
        """Close one case once it has ended, in the background: its programs stop while the
        next experiment runs (:meth:`close` waits for that)."""
        case, future = self._cases[key]

        def close_when_done() -> None:
            with contextlib.suppress(Exception):
                future.result()
            case.close()

        with self._lock:
            if key not in self._closing:
                self._closing[key] = self._closer.submit(close_when_done)

    def close(self) -> None:
        """Wait for every case to end, close each, and stop the threads."""
        for key, (case, future) in list(self._cases.items()):
            if not future.done():
                case.abandon()
            self.finish(key)
        for closing in list(self._closing.values()):
            closing.result()
        self._pool.shutdown(wait=True)
        self._closer.shutdown(wait=True)
