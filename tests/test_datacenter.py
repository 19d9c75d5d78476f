"""The data center (``sim.datacenter``): idempotent storage, dead letters, trace, and its subscriber.

The storage and trace tests feed :class:`~sim.datacenter.storage.Store` the messages
:class:`~sim.chocolate.line.LineCore` decides (no broker): the line's own batch events are
the ground truth every trace is checked against. The last tests run the program on the
test broker and kill it.
"""

from __future__ import annotations

import csv
import io
import json
import random
import signal
import sqlite3
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mqtt_factory_lab.brokers import LOG
from mqtt_factory_lab.core import process
from sim.chocolate.line import LineCore, Outgoing
from sim.chocolate.plant import ChocolateTopics
from sim.datacenter.storage import Incoming, Store, ingest_all
from sim.datacenter.trace import RECALL_COLUMNS, Traceability, UnknownLot

TS = 1767225600.0
ROOT = "factory"


def produce(batches: int = 12, seed: int = 5, **options: Any) -> list[Outgoing]:
    clock = iter(TS + i for i in range(10**7))
    core = LineCore(
        ChocolateTopics(ROOT), seed=seed, run_id="d1", clock=lambda: next(clock), **options
    )
    return list(core.run(batches))


def incoming(messages: list[Outgoing]) -> list[Incoming]:
    return [Incoming(m.topic, m.encode(), m.qos, m.retain, TS) for m in messages]


def tables(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows without ids and receive times, sorted: the normalised content."""
    db = sqlite3.connect(path)
    out = {}
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
        columns = [c[1] for c in db.execute(f"PRAGMA table_info({name})")]
        keep = [c for c in columns if c not in ("id", "received_at")]
        out[name] = sorted(db.execute(f"SELECT {', '.join(keep)} FROM {name}").fetchall(), key=repr)
    db.close()
    return out


@pytest.fixture
def stored(tmp_path: Path) -> tuple[Path, list[Outgoing]]:
    messages = produce()
    store = Store(tmp_path / "dc.db", ROOT)
    ingest_all(store, incoming(messages), chunk=97)
    store.close()
    return tmp_path / "dc.db", messages


def closure(messages: list[Outgoing], lot: str) -> set[str]:
    """Finished lots made from ``lot``, straight from the batch events."""
    consumers: dict[str, set[tuple[str, str, int]]] = defaultdict(set)
    outputs: dict[tuple[str, str, int], set[str]] = defaultdict(set)
    material = {}
    for m in messages:
        p = m.payload
        if m.message_type == "batch":
            key = (p["batch_id"], p["step"], p["attempt"])
            for i in p.get("inputs", []):
                consumers[i["lot"]].add(key)
            for o in p.get("outputs", []):
                outputs[key].add(o["lot"])
                material[o["lot"]] = o["material"]
    seen, todo = {lot}, [lot]
    while todo:
        for key in consumers[todo.pop()]:
            new = outputs[key] - seen
            seen |= new
            todo += new
    return {x for x in seen if material.get(x) == "finished_chocolate"}


def raw_lots(messages: list[Outgoing]) -> set[str]:
    return {
        i["lot"]
        for m in messages
        if m.message_type == "batch"
        for i in m.payload.get("inputs", [])
        if i["material"]
        in ("cocoa_beans", "sugar", "milk_powder", "cocoa_butter", "hazelnut_paste")
    }


# -- storage --------------------------------------------------------------------------


def test_every_message_is_stored_once_even_when_delivered_again(tmp_path: Path) -> None:
    messages = incoming(produce())
    store = Store(tmp_path / "dc.db", ROOT)
    first = ingest_all(store, messages)
    before = tables(tmp_path / "dc.db")
    again = ingest_all(store, messages[::3])  # a third comes again, as after a crash
    store.close()
    assert (first.stored, first.duplicates, first.dead_letters) == (len(messages), 0, 0)
    assert (again.stored, again.duplicates) == (0, len(messages[::3]))
    assert tables(tmp_path / "dc.db") == before, "a redelivery changes nothing"


def test_arrival_order_does_not_change_what_is_stored(tmp_path: Path) -> None:
    messages = incoming(produce())
    shuffled = messages[:]
    random.Random(3).shuffle(shuffled)
    for name, batch in (("ordered", messages), ("shuffled", shuffled)):
        store = Store(tmp_path / f"{name}.db", ROOT)
        ingest_all(store, batch, chunk=50)
        store.close()
    assert tables(tmp_path / "ordered.db") == tables(tmp_path / "shuffled.db")


VALID_QUALITY = produce(2)[0]


def _quality_topic() -> str:
    return f"{ROOT}/tunis-01/line-a/s5_tempering/temper-01/quality"


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        pytest.param(_quality_topic(), b'{"result": pass', "not valid JSON", id="invalid-json"),
        pytest.param(_quality_topic(), b"\xff\xfe", "not UTF-8", id="not-utf8"),
        pytest.param(_quality_topic(), b"", "empty", id="empty"),
        pytest.param(_quality_topic(), b"[1, 2]", "not an object", id="not-an-object"),
        pytest.param(_quality_topic(), b'{"value": NaN}', "not valid JSON", id="nan"),
        pytest.param(
            _quality_topic(), b'{"result": "maybe"}', "does not fit schema", id="schema-invalid"
        ),
        pytest.param(
            f"{ROOT}/tunis-01/line-a/s5_tempering/temper-01/batch",
            b'{"schema_version": 7, "batch_id": "B"}',
            "unknown batch event version 7",
            id="unknown-version",
        ),
        pytest.param(
            f"{ROOT}/tunis-01/line-a/s5_tempering/temper-01/gossip",
            b"{}",
            "unknown message type 'gossip'",
            id="unknown-type",
        ),
        pytest.param(f"{ROOT}/tunis-01/oops", b"{}", "does not follow", id="short-topic"),
    ],
)
def test_bad_input_goes_to_dead_letters_with_its_reason(
    tmp_path: Path, topic: str, payload: bytes, reason: str
) -> None:
    store = Store(tmp_path / "dc.db", ROOT)
    bad = Incoming(topic, payload, 1, False, TS)
    result = store.ingest([bad, bad])
    good = store.ingest(incoming(produce(1)[:5]))
    store.close()
    assert (result.stored, result.dead_letters, result.duplicates) == (0, 1, 1)
    assert good.stored == 5, "the data center goes on after a bad payload"
    rows = (
        sqlite3.connect(tmp_path / "dc.db")
        .execute("SELECT topic, payload, reason FROM dead_letters")
        .fetchall()
    )
    assert [(t, bytes(p)) for t, p, _ in rows] == [(topic, payload)]
    assert reason in rows[0][2], rows[0][2]


def test_an_empty_retained_state_deletes_the_machine_state_and_is_no_dead_letter(
    tmp_path: Path,
) -> None:
    state = next(m for m in produce(1) if m.message_type == "state")
    store = Store(tmp_path / "dc.db", ROOT)
    store.ingest([Incoming(state.topic, state.encode(), 1, True, TS)])
    cleared = store.ingest([Incoming(state.topic, b"", 1, True, TS)])
    store.close()
    db = sqlite3.connect(tmp_path / "dc.db")
    assert (cleared.stored, cleared.dead_letters) == (1, 0)
    assert db.execute("SELECT count(*) FROM machine_states").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM mqtt_messages WHERE payload = ''").fetchone()[0] == 1


def test_a_payload_naming_another_machine_than_its_topic_is_a_dead_letter(tmp_path: Path) -> None:
    message = next(m for m in produce(1) if m.message_type == "quality")
    wrong_topic = message.topic.replace(message.payload["machine"], "ghost-01")
    store = Store(tmp_path / "dc.db", ROOT)
    result = store.ingest([Incoming(wrong_topic, message.encode(), 1, False, TS)])
    store.close()
    assert result.dead_letters == 1


def test_version_1_batch_events_are_accepted_and_traced(tmp_path: Path) -> None:
    messages = produce(6, batch_schema=1)
    store = Store(tmp_path / "dc.db", ROOT)
    result = ingest_all(store, incoming(messages))
    store.close()
    assert result.dead_letters == 0
    with Traceability(tmp_path / "dc.db") as trace:
        finished = [r[0] for r in trace.db.execute("SELECT lot FROM lots WHERE lot LIKE 'FG-%'")]
        assert finished
        back = trace.backward(finished[0])
        assert back["raw_lots"] and len(back["steps"]) >= 6
        assert {row["status"] for row in trace.mass_balance()} <= {"unknown"}


# -- trace ------------------------------------------------------------------------------


def test_forward_trace_finds_exactly_the_finished_lots_made_from_each_raw_lot(stored) -> None:
    path, messages = stored
    with Traceability(path) as trace:
        for lot in sorted(raw_lots(messages)):
            assert set(trace.forward(lot)["finished_lots"]) == closure(messages, lot), lot


def test_backward_trace_of_a_finished_lot_reaches_its_raw_lots_with_alarms_and_quality(
    stored,
) -> None:
    path, messages = stored
    alarmed = {
        (m.payload["batch_id"], m.payload["step"]) for m in messages if m.message_type == "alarm"
    }
    with Traceability(path) as trace:
        finished = [r[0] for r in trace.db.execute("SELECT lot FROM lots WHERE lot LIKE 'FG-%'")]
        for lot in finished:
            back = trace.backward(lot)
            for raw in back["raw_lots"]:
                assert lot in trace.forward(raw)["finished_lots"]
            steps = {(s["batch_id"], s["step"]) for s in back["steps"] if s["alarms"]}
            batch = back["batch_id"]
            assert steps == {a for a in alarmed if a[0] == batch}, lot
            assert any(s["quality"] for s in back["steps"])
            assert all(s["machine"] and s["started"] and s["completed"] for s in back["steps"])


def test_recalling_a_finished_lot_recalls_that_lot_and_its_shipments(stored) -> None:
    path, messages = stored
    shipped = next(
        (m.payload["shipment"]["shipment_id"], m.payload["shipment"]["lots"][0]["lot"])
        for m in messages
        if m.message_type == "batch" and m.payload["event"] == "shipped"
    )
    with Traceability(path) as trace:
        found = trace.forward(shipped[1])
        rows = trace.recall_rows(shipped[1])
    assert found["finished_lots"] == [shipped[1]] and found["lots"] == []
    assert [(r["lot_code"], r["shipment_id"]) for r in rows] == [(shipped[1], shipped[0])]


def test_an_unknown_lot_is_reported_as_such(stored) -> None:
    path, _ = stored
    with Traceability(path) as trace, pytest.raises(UnknownLot, match="appears in no batch event"):
        trace.forward("HZP-nope-001")


def test_mass_balance_flags_exactly_the_batches_with_an_undeclared_loss(tmp_path: Path) -> None:
    for spill, expected in ((0.0, {"ok"}), (1.0, {"FLAGGED"})):
        path = tmp_path / f"spill-{spill}.db"
        store = Store(path, ROOT)
        ingest_all(store, incoming(produce(6, spill_rate=spill)))
        store.close()
        with Traceability(path) as trace:
            assert {row["status"] for row in trace.mass_balance()} == expected


def test_recall_report_is_csv_sorted_by_lot_and_time_with_the_key_data_elements(stored) -> None:
    path, messages = stored
    sugar = sorted(lot for lot in raw_lots(messages) if lot.startswith("SUG"))[0]
    with Traceability(path) as trace:
        rows = list(csv.DictReader(io.StringIO(trace.recall_csv(sugar))))
    assert rows and tuple(rows[0]) == RECALL_COLUMNS
    assert {r["lot_code"] for r in rows} == closure(messages, sugar)
    assert [(r["lot_code"], r["date"]) for r in rows] == sorted(
        (r["lot_code"], r["date"]) for r in rows
    )
    assert all(float(r["quantity"]) > 0 and r["unit"] == "kg" and r["location"] for r in rows)
    assert all(r["product"].endswith("chocolate") for r in rows)


def test_trace_command_answers_in_text_json_and_csv(stored, run_program, nowhere, tmp_path) -> None:
    path, messages = stored
    hazelnut = sorted(lot for lot in raw_lots(messages) if lot.startswith("HZP"))[0]
    out = tmp_path / "answer.json"
    done = run_program(
        "sim.datacenter",
        "trace",
        "--db",
        str(path),
        "--json",
        "--output",
        str(out),
        "forward",
        hazelnut,
        broker=nowhere,
    )
    assert done.returncode == 0, done.stderr
    assert set(json.loads(out.read_text())["finished_lots"]) == closure(messages, hazelnut)
    text = run_program("sim.datacenter", "trace", "--db", str(path), "balance", broker=nowhere)
    assert text.returncode == 0 and "B-d1-0001" in text.stdout
    recall = run_program(
        "sim.datacenter", "trace", "--db", str(path), "recall", hazelnut, broker=nowhere
    )
    assert recall.stdout.startswith(",".join(RECALL_COLUMNS))
    unknown = run_program(
        "sim.datacenter", "trace", "--db", str(path), "backward", "FG-nope", broker=nowhere
    )
    assert unknown.returncode == 1 and "appears in no batch event" in unknown.stderr
    missing = run_program(
        "sim.datacenter", "trace", "--db", str(tmp_path / "none.db"), "balance", broker=nowhere
    )
    assert missing.returncode == 2 and "run the data center first" in missing.stderr


# -- the subscriber on a broker --------------------------------------------------------------


def test_help_names_the_trace_command(run_program, nowhere) -> None:
    done = run_program("sim.datacenter", "--help", broker=nowhere)
    assert done.returncode == 0 and "trace" in done.stdout and "--db" in done.stdout


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Whether ``condition`` came true within ``timeout`` seconds (the lab's one polling loop)."""
    try:
        process.wait_until(condition, timeout, interval=interval)
    except process.ProcessTimeout:
        return False
    return True


def rows_with_key(db: Path, msg_id: str) -> int:
    reader = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return reader.execute(
            "SELECT count(*) FROM mqtt_messages WHERE msg_key = ?", ("id:" + msg_id,)
        ).fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        reader.close()


@pytest.mark.broker_needs(LOG)
def test_a_record_the_database_could_not_commit_is_not_acknowledged(
    broker, sim_program, mqtt_client, topic_root, tmp_path, unique_id
) -> None:
    """Hold the database's write lock so the data center cannot commit, and kill it: the
    record was never acknowledged, so the broker sends it again to the restarted data center."""
    db = tmp_path / "dc.db"
    client_id = unique_id("datacenter")
    args = ("--db", str(db), "--client-id", client_id)
    first = sim_program("sim.datacenter", *args)
    blocker = sqlite3.connect(db, timeout=30)
    blocker.execute("BEGIN EXCLUSIVE")  # a stalled disk: nothing can commit
    message = next(m for m in produce(1, seed=9) if m.message_type == "quality")
    mark = broker.log_mark()
    mqtt_client().publish(message.topic.replace(ROOT, topic_root, 1), message.encode(), qos=1)
    broker.wait_for_log(f"Sending PUBLISH to {client_id}", timeout=5, since=mark)
    first.kill()  # it holds the record, uncommitted and so unacknowledged
    blocker.rollback()
    blocker.close()
    assert rows_with_key(db, message.payload["msg_id"]) == 0

    second = sim_program("sim.datacenter", *args)
    assert wait_until(lambda: rows_with_key(db, message.payload["msg_id"]) == 1, 10), (
        second.describe_failure("did not store the record the broker had to send again")
    )


def test_killed_again_and_again_the_datacenter_loses_and_doubles_nothing(
    sim_program, mqtt_client, topic_root, tmp_path, unique_id
) -> None:
    db = tmp_path / "dc.db"
    client_id = unique_id("datacenter")
    args = ("--db", str(db), "--client-id", client_id)
    watcher = mqtt_client()
    watcher.subscribe(f"{topic_root}/#", qos=1)
    datacenter = sim_program("sim.datacenter", *args)
    line = sim_program(
        "sim.chocolate",
        "--batches",
        "6",
        "--time-scale",
        "60000",
        "--client-id",
        unique_id("line"),
    )
    for _ in range(3):
        count = len(watcher.received())
        wait_until(lambda count=count: len(watcher.received()) >= count + 60, 10)
        datacenter.kill()
        datacenter = sim_program("sim.datacenter", *args)
    assert line.wait_exit(60) == 0, line.describe_failure("did not finish")
    watcher.sync()
    expected = {json.loads(m.payload)["msg_id"] for m in watcher.received() if m.qos == 1}

    def stored() -> dict[str, int]:
        reader = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        rows = reader.execute("SELECT payload FROM mqtt_messages").fetchall()
        reader.close()
        counts: dict[str, int] = defaultdict(int)
        for (payload,) in rows:
            counts[json.loads(payload)["msg_id"]] += 1
        return counts

    wait_until(lambda: expected <= set(stored()), 15)
    counts = stored()
    assert not expected - set(counts), f"lost: {sorted(expected - set(counts))[:5]}"
    assert all(n == 1 for n in counts.values()), "a record was stored twice"


def test_sigterm_stores_what_arrived_and_exits_cleanly(
    sim_program, mqtt_client, topic_root, tmp_path, unique_id
) -> None:
    db = tmp_path / "dc.db"
    datacenter = sim_program("sim.datacenter", "--db", str(db), "--client-id", unique_id("dc"))
    message = next(m for m in produce(1, seed=4) if m.message_type == "batch")
    mqtt_client().publish(message.topic.replace(ROOT, topic_root, 1), message.encode(), qos=1)
    assert wait_until(lambda: rows_with_key(db, message.payload["msg_id"]) == 1, 10)
    datacenter.signal(signal.SIGTERM)
    assert datacenter.wait_exit(10) == 0, datacenter.describe_failure("did not stop on SIGTERM")
    assert "1 stored, 0 duplicates ignored, 0 dead letters" in datacenter.output()
