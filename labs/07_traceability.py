"""Lesson 07 — Traceability: a data center that never loses a batch record.

A chocolate factory must answer one question fast, on the day a supplier
calls: *this lot of hazelnut paste is contaminated: which chocolate did it go
into, and where is that chocolate now?* The answer is only as good as the
records: one lost batch event, and a contaminated pallet is missing from the
recall. This lesson is where MQTT's delivery guarantees meet a database.

The line (``python -m sim.chocolate``) has eight steps, ``s1_roasting`` to
``s8_packaging``, and publishes under
``<root>/<site>/<line>/<step>/<machine>/<message_type>``, with the QoS chosen by
how much a message matters:

* ``telemetry`` at **QoS 0**: the next reading replaces a lost one;
* ``state`` at **QoS 1, retained**, with a **Last Will** (``offline``): a
  dashboard opened later sees every machine at once, and a dead machine does
  not stay "running";
* ``alarm``, ``quality`` and ``batch`` at **QoS 1**: each must arrive *at least
  once*. Batch events name the lots each step consumed and produced: the
  traceability graph.

The data center (``python -m sim.datacenter``) stores every message in SQLite.
"At least once" only holds end to end if it follows three rules:

* **A persistent session.** A fixed client id, clean start off, a session
  expiry: while the data center is down, the broker *queues* QoS 1 messages for
  it. QoS 0 messages are not queued: telemetry sent during an outage is a gap,
  by design.
* **Acknowledge after commit.** The PUBACK tells the broker "I have it, forget
  it". Sent before the database commit, a crash in between loses the record for
  good. paho acknowledges when ``on_message`` returns unless the client is made
  with ``manual_ack``; then the program calls ``client.ack(mid, qos)`` after the
  commit. A message never acknowledged is sent again (``dup`` flag set) when the
  session resumes.
* **Idempotent storage.** "At least once" means "sometimes twice": a record
  committed just before a crash, but not yet acknowledged, comes again. Each
  payload carries a ``msg_id``; stored under a UNIQUE key, the second copy is a
  no-op.

And **bad input is kept, never fatal**: a payload that is not JSON, breaks its
schema, or has a batch-event version nobody knows goes to a ``dead_letters``
table with the reason. Crashing on it would be worse than losing it: the broker
would hand it back at every restart.

Try it (a broker on localhost:1884, e.g. ``mosquitto -p 1884``)::

    python -m sim.datacenter --db choc.db &                  # ready datacenter
    python -m sim.chocolate --batches 6 --time-scale 20000    # ready choc-line-a ... done
    python -m sim.datacenter trace --db choc.db balance       # mass balance per batch
    python -m sim.datacenter trace --db choc.db forward HZP-<run>-001
    python -m sim.datacenter trace --db choc.db recall HZP-<run>-001 --output recall.csv
    python -m sim.datacenter trace --db choc.db backward FG-B-<run>-0002-1

Kill the data center with ``kill -9`` while the line runs, start it again: it
resumes its session and nothing QoS 1 is missing (``docs/chocolate.md``). The lab
makes that verdict independent of luck: it holds the database (an exclusive lock, so
nothing can be committed), publishes, kills the data center, releases the lock and
restarts it; every record must come back, which it does only if nothing was
acknowledged before its commit.

**A persistent session has a limit.** The broker keeps at most
``max_queued_messages`` messages for a client that is away and drops the newest past
it, saying so once in its log (``Outgoing messages are being dropped for client
<id>.``): an outage longer than the queue loses records for good. The lab's
``docker/mosquitto.conf`` sets the limit for the chocolate line deliberately;
``docs/chocolate.md`` says how long an outage that survives.

Your programs in this lesson: the solution manifest's ``[roles.chocolate_line]``
(the line: ``{batches}``, ``{time_scale}``, ``{run_id}``, ``{seed}``; prints
``ready {client_id}``), ``[roles.datacenter]`` (writes ``{db}``: table
``mqtt_messages`` with ``topic``, ``payload``, ``qos`` and table ``dead_letters``
with ``topic``, ``payload``, ``reason``; prints ``ready {client_id}``) and
``[roles.trace]`` (writes to ``{output}`` a JSON object whose ``finished_lots``
are every finished lot made from ``{lot}``). The whole contract, enough to write
them without reading ``sim/``: ``docs/chocolate.md``, "Your line and data center"
(the starter has a skeleton of each).

Run it: ``pytest labs/07_traceability.py -v`` (``-m broker`` for the broker's
part, ``-m solution --solution PATH`` to grade a solution).
"""

from __future__ import annotations

import json
import re

import pytest

from mqtt_factory_lab.brokers import CONFIG, LOG
from mqtt_factory_lab.contract import chocolate_steps, validate_message
from mqtt_factory_lab.core.traceability import MACHINE, msg_id_of, qos1_ids, record, topic_of
from mqtt_factory_lab.experiment import remember_mids, unique
from mqtt_factory_lab.experiment.traceability import (
    dead_letter_problem,
    duplicate_problem,
    policy_break,
    trace_break,
)
from mqtt_factory_lab.fixtures.factory import or_fail

#: the solution experiments' cases run side by side (mqtt_factory_lab/fixtures/chocolate.py)
pytestmark = [pytest.mark.lesson(7), pytest.mark.usefixtures("chocolate_cases")]

PROTOCOLS = [pytest.param("3.1.1", id="mqtt3.1.1"), pytest.param("5", id="mqtt5")]
#: message type -> (QoS, retained), the seed's policy
POLICY = {
    "telemetry": (0, False),
    "state": (1, True),
    "alarm": (1, False),
    "quality": (1, False),
    "batch": (1, False),
}
RECORD_TYPES = ("alarm", "quality", "batch")
STEPS = chocolate_steps()
#: white chocolate has no cocoa mass: no roasting, no grinding
ROUTES = {"dark": STEPS, "milk": STEPS, "white": STEPS[2:]}
# The line's records and the cases the experiments judge: mqtt_factory_lab.core.traceability
# (run side by side by fixtures/chocolate.py); the longer verdicts: experiment.traceability.


# -- The broker's part: what "at least once" is made of ---------------------------------


@pytest.mark.broker
@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    "message_type",
    [
        # whether QoS 0 is kept for an offline session is the broker's choice: observed
        pytest.param("telemetry", marks=pytest.mark.rule("may", mqtt311="§3.1.2.4", mqtt5="§4.1")),
        *RECORD_TYPES,
    ],
)
@pytest.mark.needs("qos1")
@pytest.mark.spec("MQTT-3.1.2-5", mqtt5=["MQTT-3.1.2-23"])
def test_persistent_session_queues_qos1_records_but_not_telemetry_while_away(
    mqtt_client, topic_root, protocol, message_type, behaviour
):
    qos, _retained = POLICY[message_type]
    step = "s5_tempering"
    topic = topic_of(topic_root, step, MACHINE[step], message_type)
    datacenter_id = unique("datacenter")
    datacenter = mqtt_client(
        datacenter_id, protocol=protocol, clean_start=False, session_expiry=300
    )
    datacenter.subscribe(f"{topic_root}/+/+/+/+/+", qos=1)
    datacenter.disconnect()

    sent = record(message_type, step)
    line = mqtt_client(protocol=protocol)
    line.publish(topic, sent, qos=qos)
    line.sync()  # the broker has handled the publish before the data center comes back

    back = mqtt_client(datacenter_id, protocol=protocol, clean_start=False, session_expiry=300)
    assert back.connack["session_present"], (
        f"The data center reconnected with client id {datacenter_id!r} and clean start off, so "
        "the broker must resume its session (CONNACK session present = 1); it started a new one."
    )
    if qos == 1:
        got = back.wait_for_message(
            topic,
            queued=True,
            why=f"A {message_type} record is published at QoS 1 and the data center's session "
            "is persistent: the broker queues the record while the data center is away and "
            "delivers it when the session resumes. Nothing came on " + topic,
        )
        assert validate_message(got.topic, got.payload, root=topic_root) == sent, (
            "The queued record must arrive exactly as it was published."
        )
    else:
        back.sync()
        kept = back.received(topic)
        behaviour.observe(
            f"it queued {len(kept)} QoS 0 telemetry reading(s) for the offline data center",
            as_taught=not kept,
            lesson="Telemetry is published at QoS 0: Mosquitto does not queue QoS 0 messages for "
            "a subscriber that is away, even with a persistent session (a broker may: MQTT "
            "3.1.1 §3.1.2.4, MQTT 5 §4.1). The data center must expect a gap, not a late reading.",
        )


@pytest.mark.broker
@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.needs("qos1")
@pytest.mark.spec("MQTT-4.4.0-1")
def test_unacknowledged_record_comes_back_and_acknowledged_one_does_not(
    mqtt_client, topic_root, protocol
):
    step = "s8_packaging"
    topic = topic_of(topic_root, step, MACHINE[step], "quality")
    datacenter_id = unique("datacenter")
    datacenter = mqtt_client(
        datacenter_id, protocol=protocol, clean_start=False, session_expiry=300, connect=False
    )
    # Acknowledge by hand, as a data center does after its commit; note each packet id (mid).
    mids = remember_mids(datacenter, topic)
    datacenter.connect()
    datacenter.subscribe(topic, qos=1)

    line = mqtt_client(protocol=protocol)
    committed = record("quality", step, result="pass")
    crashed = record("quality", step, result="pass")
    line.publish(topic, committed, qos=1)
    line.publish(topic, crashed, qos=1)
    # A broker may send one unacknowledged QoS 1 message at a time (flow control, MQTT 5
    # §4.9): the second record may wait for the first one's PUBACK, so acknowledge first.
    datacenter.wait_for_message(topic)
    datacenter.paho.ack(mids[0], 1)  # the first record is committed: acknowledge it
    datacenter.wait_for_messages(2, topic)
    datacenter.sync()  # our PUBACK has reached the broker before we "crash"
    datacenter.drop()  # killed before the second commit: no PUBACK for it, no DISCONNECT

    back = mqtt_client(datacenter_id, protocol=protocol, clean_start=False, session_expiry=300)
    again = back.wait_for_message(
        topic,
        queued=True,
        why="The data center received a QoS 1 record but died before acknowledging it: the "
        "broker must send it again when the session resumes. Nothing came back on " + topic,
    )
    back.sync()
    ids = [msg_id_of(m.payload) for m in back.received(topic)]
    assert ids == [crashed["msg_id"]], (
        "After the restart the broker sends again exactly the records that were never "
        "acknowledged: the acknowledged one is gone for good (the broker forgot it at the "
        f"PUBACK), the unacknowledged one comes back. Expected [{crashed['msg_id']!r}], got {ids}."
    )
    assert again.dup, (
        "A QoS 1 message the broker sends again after an unacknowledged delivery carries the "
        "DUP flag, telling the receiver it may have seen it before: it arrived with dup=0."
    )


@pytest.mark.broker
@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.needs("retain")
@pytest.mark.spec(
    "MQTT-3.3.1-5", "MQTT-3.1.2-8", mqtt311=["MQTT-3.1.2-17"], mqtt5=["MQTT-3.1.2-15"]
)
def test_machine_state_is_retained_and_its_last_will_says_offline(
    mqtt_client, topic_root, protocol
):
    step = "s5_tempering"
    topic = topic_of(topic_root, step, MACHINE[step], "state")
    will = record("state", step, state="offline", reason="last-will")
    machine = mqtt_client(protocol=protocol, will=(topic, json.dumps(will), 1, True))
    machine.publish(topic, record("state", step, state="running"), qos=1, retain=True)
    machine.drop()  # the tempering machine's controller loses power

    dashboard = mqtt_client(protocol=protocol)
    dashboard.subscribe(topic, qos=1)
    got = dashboard.wait_for_message(
        lambda m: m.topic == topic and m.json().get("state") == "offline",
        why="The machine vanished without DISCONNECT, so the broker publishes its Last Will "
        "(state offline, retained) in its place; a dashboard opened afterwards must find it.",
    )
    assert got.retain, "The Last Will was published retained, so a late dashboard gets it stored."
    assert validate_message(topic, got.payload, root=topic_root)["reason"] == "last-will"


# -- The solution's line and data center over one production run ----------------------


@pytest.mark.solution
@pytest.mark.parametrize("message_type", list(POLICY))
def test_line_publishes_each_message_type_at_its_qos_and_retains_only_state(
    production, message_type
):
    qos, retained = POLICY[message_type]
    messages = production.of_type(message_type)
    assert messages, (
        f"The line was asked for {production.batches} batches but published no {message_type} message "
        f"under {production.root}/<site>/<line>/<step>/<machine>/{message_type}."
        + "".join("\n" + p for p in production.problems)
    )
    problem = policy_break(messages, message_type, qos, retained, production.root)
    assert problem is None, problem


@pytest.mark.solution
def test_every_machine_leaves_its_state_retained(production, mqtt_client):
    machines = {m.topic.rsplit("/", 1)[0] for m in production.messages}
    dashboard = mqtt_client()
    dashboard.subscribe(f"{production.root}/+/+/+/+/state", qos=1)
    dashboard.sync()
    stored = {m.topic.rsplit("/", 1)[0]: m for m in dashboard.received() if m.retain}
    missing = sorted(machines - set(stored))
    assert not missing, (
        f"Every machine publishes its state retained, so a dashboard opened after the run "
        f"still sees all {len(machines)} machines; no stored state for {missing[:3]}"
        f"{' ...' if len(missing) > 3 else ''}."
    )
    running = [t for t, m in stored.items() if m.json().get("state") == "running"]
    assert not running, (
        "The line has finished, so no machine may still be stored as 'running': a machine "
        f"that stops publishes its state (offline) before it disconnects. Still running: {running}"
    )


@pytest.mark.solution
@pytest.mark.parametrize("recipe", list(ROUTES))
def test_every_batch_has_a_complete_schema_valid_trace(production, recipe):
    batches = {
        batch_id: events
        for batch_id, events in production.batch_events().items()
        if events[0]["recipe"] == recipe
    }
    assert batches, (
        f"The line was asked for {production.batches} batches and none was {recipe}: the line must make "
        f"white, milk and dark chocolate (each three batches in a row cover all three)."
    )
    for batch_id, events in batches.items():
        checked = {e["step"] for e in production.quality(batch_id)}
        problem = trace_break(batch_id, recipe, ROUTES[recipe], events, checked)
        assert problem is None, problem
    stored = production.database.msg_ids()
    missing = [
        (e["batch_id"], e["event"], e["step"])
        for events in batches.values()
        for e in events
        if stored[e["msg_id"]] == 0
    ]
    assert not missing, (
        f"The data center must store every batch event (QoS 1) of every {recipe} batch; "
        f"{len(missing)} are missing from mqtt_messages, e.g. {missing[:3]}. "
        f"{production.database.describe()}."
    )


@pytest.mark.solution
def test_datacenter_stores_every_qos1_record_of_the_run_exactly_once(production):
    expected = qos1_ids(production.messages)
    stored = production.database.msg_ids()
    lost = sorted(expected - set(stored))
    assert not lost, (
        f"The data center must store every QoS 1 message (state, alarm, quality, batch): the line "
        f"sent {len(expected)}, {len(lost)} never reached mqtt_messages, e.g. {lost[:3]}. "
        f"{production.database.describe()}."
    )
    doubled = sorted(i for i, n in stored.items() if n > 1)
    assert not doubled, (
        f"Each record must be stored once: {len(doubled)} msg_id(s) are in mqtt_messages more "
        f"than once, e.g. {doubled[:3]}. Use the msg_id as a UNIQUE idempotency key."
    )
    assert not production.database.dead_letters(), (
        "The line's payloads are all valid, so none may end in dead_letters; found: "
        f"{production.database.dead_letters()[:2]}"
    )


@pytest.mark.solution
@pytest.mark.parametrize("raw_material", ["hazelnut_paste", "milk_powder", "sugar", "cocoa_beans"])
def test_recall_returns_exactly_the_finished_lots_made_from_a_raw_lot(recall, raw_material):
    # The case (Recall) runs the trace role for the first lot of raw_material the run used.
    run = or_fail(recall)
    assert run.lot, f"No batch of the run consumed {raw_material}: the recipes need it."
    lot, truth, answer_file, status = run.lot, run.truth, run.answer_file, run.status
    assert status == 0 and answer_file.exists(), run.trace.describe_failure(
        f"did not answer the recall query for lot {lot} (exit {status}, {answer_file.name} "
        f"{'written' if answer_file.exists() else 'not written'})"
    )
    answer = run.answer()
    assert answer == truth, (
        f"A recall of {raw_material} lot {lot} must name exactly the finished lots made from it "
        f"(through every intermediate lot and rework): the batch events say {sorted(truth)}; "
        f"the trace answered {sorted(answer)}. Missing: {sorted(truth - answer)}; not affected "
        f"but named: {sorted(answer - truth)}."
    )


# -- Crashes and bad input ----------------------------------------------------------------


@pytest.mark.solution
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_killed_datacenter_loses_no_qos1_record_and_duplicates_none(killed_datacenter, protocol):
    # The case (core/traceability.py, KilledDatacenter) kills the data center (SIGKILL)
    # mid-production, lets the line publish into the outage and starts it again.
    run = or_fail(killed_datacenter)
    assert run.line_status == 0, run.line.describe_failure(f"exited with status {run.line_status}")
    expected, stored = qos1_ids(run.messages), run.stored
    lost = sorted(expected - set(stored))
    assert not lost, (
        f"The data center was killed (SIGKILL) during production and restarted: {len(lost)} of "
        f"{len(expected)} QoS 1 records are lost, e.g. {lost[:3]}. A record acknowledged before "
        "it was committed is gone for good when the process dies in between: acknowledge QoS 1 "
        "messages only after the commit (paho: manual_ack=True, then client.ack(mid, qos)), and "
        "resume the session (same client id, clean start off) so the broker sends the rest. "
        f"{run.database.describe()}."
    )
    problem = duplicate_problem(run)
    assert problem is None, problem
    assert run.telemetry_gap(), (
        "Telemetry is QoS 0: what the line sent while the data center was dead cannot be queued "
        "by the broker, so the database must show a gap; every reading is there, which means "
        "telemetry was not published at QoS 0 or the data center is not the one that was killed."
    )


@pytest.mark.solution
def test_datacenter_stores_a_record_sent_twice_only_once(redelivered_record):
    # The case (RedeliveredRecord) publishes one batch event twice, as a redelivery does.
    run = or_fail(redelivered_record)
    copies, event = run.copies, run.event
    assert copies == 1, (
        f"The batch event {event['msg_id']} arrived twice, as a QoS 1 redelivery does, and is "
        f"stored {copies} times in mqtt_messages. Use the payload's msg_id as an idempotency "
        "key (a UNIQUE column, INSERT OR IGNORE) so a redelivery is stored once."
    )


BAD_PAYLOADS = [
    pytest.param(
        "quality", b'{"batch_id": "B-1", "result": pass', "is not JSON", id="invalid-json"
    ),
    pytest.param("quality", b"\xff\xfe\x00q", "is not UTF-8 text", id="not-utf8"),
    pytest.param(
        "quality",
        json.dumps(record("quality", "s8_packaging", check=False, result="maybe")).encode(),
        "breaks its schema",
        id="schema-invalid",
    ),
    pytest.param(
        "batch",
        json.dumps(record("batch", "s8_packaging", check=False, schema_version=3)).encode(),
        "has an unknown version",
        id="unknown-version",
    ),
]


@pytest.mark.solution
@pytest.mark.parametrize(("message_type", "payload", "what"), BAD_PAYLOADS)
def test_malformed_payload_ends_in_the_dead_letter_table(dead_letter, message_type, payload, what):
    # The case (DeadLetter) publishes the payload, then a valid record, on one topic.
    run = or_fail(dead_letter)
    problem = dead_letter_problem(run, what)
    assert problem is None, problem


@pytest.mark.solution
def test_line_machines_go_offline_by_last_will_when_the_line_dies(killed_line):
    # The case (KilledLine) kills the running line (SIGKILL: a power cut) under a dashboard.
    run = or_fail(killed_line)
    assert not run.still_running(), (
        "Each machine connects with a Last Will (its state 'offline', retained, QoS 1), so "
        "when the line dies without DISCONNECT the broker publishes it for every machine; "
        f"still not offline after 10 s: {run.still_running()}."
    )


# -- Verdicts that never depend on luck --------------------------------------------------


@pytest.mark.solution
@pytest.mark.broker_needs(LOG)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_records_delivered_while_the_database_cannot_commit_all_come_back(held_database, protocol):
    # The case (core/traceability.py, HeldDatabase) holds the database's exclusive lock, so
    # nothing can be committed, publishes records, gives the data center PUBACK_GRACE
    # seconds to acknowledge them (the broker's log says which it did), kills and restarts it.
    run = or_fail(held_database)
    held, acknowledged, lost, database = run.held, run.acknowledged, run.lost, run.database
    assert not lost, (
        f"While the lab held the database (nothing could be committed), the data center was "
        f"sent {len(held)} QoS 1 records and acknowledged {len(acknowledged)} of them (the "
        f"broker logged their PUBACKs); killed and restarted, {len(lost)} are lost for good: "
        "the broker forgot each one at its PUBACK. A data center must acknowledge QoS 1 messages "
        "only after the commit (paho: manual_ack=True, then client.ack(mid, qos) once the transaction is "
        f"committed); a record never acknowledged comes back. {database.describe()}."
    )


#: the broker's queue limit in the outage experiment (the lab's own config says 100000)
SMALL_QUEUE = 20


@pytest.mark.broker
@pytest.mark.broker_needs(CONFIG, LOG)
@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.rule("may", mqtt311="§4.1", mqtt5="§4.1.1")
def test_an_outage_longer_than_the_queue_loses_the_newest_records(
    make_broker, mqtt_client, topic_root, protocol
):
    broker = make_broker("open", extra_config=f"max_queued_messages {SMALL_QUEUE}\n")
    step = "s8_packaging"
    topic = topic_of(topic_root, step, MACHINE[step], "quality")
    datacenter_id = unique("datacenter")
    session = {"protocol": protocol, "clean_start": False, "session_expiry": 300, "broker": broker}
    datacenter = mqtt_client(datacenter_id, **session)
    datacenter.subscribe(topic, qos=1)
    datacenter.disconnect()  # the data center is down: an outage begins

    mark = broker.log_mark()
    line = mqtt_client(protocol=protocol, broker=broker)
    sent = [record("quality", step, result="pass") for _ in range(SMALL_QUEUE + 10)]
    for payload in sent:
        line.publish(topic, payload, qos=1)  # each one acknowledged: the line sees no problem
    line.sync()
    dropped = broker.wait_for_log(
        rf"Outgoing messages are being dropped for client {re.escape(datacenter_id)}",
        since=mark,
    )
    back = mqtt_client(datacenter_id, **session)
    back.wait_for_messages(SMALL_QUEUE, topic)
    back.sync()
    ids = [msg_id_of(m.payload) for m in back.received(topic)]
    assert ids == [p["msg_id"] for p in sent[:SMALL_QUEUE]], (
        f"With max_queued_messages {SMALL_QUEUE}, the broker keeps the first {SMALL_QUEUE} "
        f"records published while the data center is away and drops the newer ones: {len(sent)} "
        f"were published, {len(ids)} came back. An outage longer than the queue loses records "
        "for good, and only the broker's log says so "
        f"({dropped.strip()!r}): size max_queued_messages for the longest outage "
        "(docs/chocolate.md has the table)."
    )
