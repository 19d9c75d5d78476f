"""The instruments lessons use, moved out of the chapters (issue 21), do what the chapters rely on.

Each helper that left a lesson — the raw packet codec, lesson 01's tree and filter machinery,
lesson 04's wills, lesson 06's parties, lesson 07's records and database, the broker-log
parsers, the launcher's ``wait_online`` — is held here to its promise, against a real broker
where it talks to one. The lessons' broken variants (``tests/test_lesson_0*.py``) prove the
experiments built on them can still fail.
"""

from __future__ import annotations

import json
import sqlite3
import struct
from pathlib import Path

import pytest

from mqtt_factory_lab.brokers.mosquitto_log import pubacks_from, qos1_sent_to, routed_to
from mqtt_factory_lab.core.acl import MatrixClient
from mqtt_factory_lab.core.client import ReceivedMessage
from mqtt_factory_lab.core.packets import (
    CONNACK,
    DISCONNECT,
    PUBACK,
    SUBACK,
    RawConnection,
    describe_answer,
    packet,
    refused,
    string,
    varint,
)
from mqtt_factory_lab.core.process import ProcessTimeout, wait_until
from mqtt_factory_lab.core.traceability import (
    MACHINE,
    Database,
    forward_truth,
    last_packaging_outputs,
    msg_id_of,
    qos1_ids,
    record,
    topic_of,
)
from mqtt_factory_lab.experiment import remember_mids, wait_or_fail
from mqtt_factory_lab.experiment.acl import Parties, denials, how_to_allow, probe
from mqtt_factory_lab.experiment.topics import (
    explain_match,
    first_tree_problem,
    levels,
    topics_matched,
    tree_problem,
)
from mqtt_factory_lab.experiment.wills import says_offline, says_offline_on, status, will_of


def message(topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> ReceivedMessage:
    return ReceivedMessage(topic=topic, payload=payload, qos=qos, retain=retain, dup=False)


# -- core.packets ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "encoded"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16383, b"\xff\x7f"),
        (16384, b"\x80\x80\x01"),
    ],
)
def test_varint_is_mqtts_variable_byte_integer(n: int, encoded: bytes) -> None:
    assert varint(n) == encoded


def test_string_and_packet_frame_as_mqtt_does() -> None:
    assert string("MQTT") == b"\x00\x04MQTT"
    assert string("é") == b"\x00\x02\xc3\xa9"
    assert packet(0xC0, b"") == b"\xc0\x00"  # PINGREQ
    assert packet(0x30, b"x" * 200)[:3] == b"\x30\xc8\x01"


@pytest.mark.parametrize(
    ("answer", "expected_ack", "v5", "is_refusal"),
    [
        (None, SUBACK, False, True),  # closed the connection
        ((SUBACK, struct.pack("!H", 1) + b"\x80"), SUBACK, False, True),
        ((SUBACK, struct.pack("!H", 1) + b"\x01"), SUBACK, False, False),  # granted QoS 1
        ((DISCONNECT, b"\x81"), SUBACK, True, True),
        ((DISCONNECT, b"\x81"), SUBACK, False, False),  # 3.1.1 has no server DISCONNECT
        ((PUBACK, struct.pack("!H", 2) + b"\x90"), PUBACK, True, True),
        ((PUBACK, struct.pack("!H", 2)), PUBACK, True, False),  # success, no reason code
        ((CONNACK, b"\x00\x00"), PUBACK, True, False),
    ],
)
def test_refused_judges_an_answer_as_the_protocol_version_allows(
    answer, expected_ack, v5, is_refusal
) -> None:
    assert refused(answer, expected_ack, v5) is is_refusal


def test_describe_answer_names_the_packet_and_its_code() -> None:
    assert describe_answer(None, False) == "it closed the connection"
    assert describe_answer((SUBACK, b"\x00\x01\x80"), False) == "it sent SUBACK with code 0x80"
    assert describe_answer((DISCONNECT, b"\x8f"), True) == (
        "it sent DISCONNECT with reason code 0x8F"
    )
    assert (
        describe_answer((PUBACK, b"\x00\x02\x90"), True) == "it sent PUBACK with reason code 0x90"
    )
    assert describe_answer((PUBACK, b"\x00\x02"), False) == "it sent PUBACK"


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_raw_connection_subscribes_publishes_and_is_refused_a_bad_filter(
    broker, mqtt_client, topic_root, protocol
) -> None:
    watcher = mqtt_client(protocol=protocol)
    watcher.subscribe(f"{topic_root}/#", qos=1)
    raw = RawConnection(broker, f"raw-ok-{topic_root.split('/')[1]}", protocol)
    try:
        granted = raw.subscribe(f"{topic_root}/state/+")
        acked = raw.publish(f"{topic_root}/state/press", b"by hand")
    finally:
        raw.close()
    assert granted is not None and granted[0] == SUBACK and not refused(granted, SUBACK, False)
    assert acked is not None and acked[0] == PUBACK and not refused(acked, PUBACK, protocol == "5")
    got = watcher.wait_for_message(f"{topic_root}/state/press")
    assert got.payload == b"by hand"

    bad = RawConnection(broker, f"raw-bad-{topic_root.split('/')[1]}", protocol)
    try:
        answer = bad.subscribe(f"{topic_root}/#/x")
    finally:
        bad.close()
    assert refused(answer, SUBACK, protocol == "5"), describe_answer(answer, protocol == "5")


# -- experiment.topics ----------------------------------------------------------------------


def test_levels_are_the_levels_below_the_root() -> None:
    assert levels("lab/1/factory/state/press", "lab/1/factory") == ["state", "press"]
    assert levels("lab/1/factory", "lab/1/factory") == []
    assert levels("other/state/press", "lab/1/factory") == []


@pytest.mark.parametrize(
    ("topic", "payload", "problem"),
    [
        ("r/telemetry/press/temperature", b'{"device_id": "press"}', None),
        ("r/state/press", b"{}", None),
        ("r/Telemetry/press/temperature", b"{}", "topic levels are case sensitive"),
        ("r/press/telemetry/temperature", b"{}", "level 1 is the device id 'press'"),
        ("r/telemetry/temperature/press", b"{}", "levels 2 and 3 are swapped"),
        ("r/state/press/extra", b"{}", "it has 2 level(s) after 'state'"),
        ("r/commands/x/press", b"{}", "a device publishes no commands"),
        ("r/state/press", b'{"device_id": "oven"}', "the payload says device_id 'oven'"),
        ("elsewhere/state/press", b"{}", "not under the topic root r"),
    ],
)
def test_tree_problem_names_the_level_out_of_place(topic, payload, problem) -> None:
    found = tree_problem(topic, "r", ("press", "oven"), payload)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found, found


def test_explain_match_says_what_was_missing_and_extra() -> None:
    root = "lab/7/factory"
    text = explain_match(
        f"{root}/telemetry/#",
        "the rule",
        {f"{root}/telemetry/a", f"{root}/telemetry/b"},
        {f"{root}/telemetry/a", f"{root}/x"},
        root,
    )
    assert text.splitlines()[0] == "the rule"
    assert "filter:   {root}/telemetry/#" in text
    assert "missing:  {root}/telemetry/b" in text and "extra:    {root}/x" in text


def test_topics_matched_and_first_tree_problem_read_a_real_broker(mqtt_client, topic_root) -> None:
    got = topics_matched(
        mqtt_client,
        f"{topic_root}/telemetry/+/temperature",
        [f"{topic_root}/telemetry/press/temperature", f"{topic_root}/telemetry/press/pressure"],
        "5",
    )
    assert got == {f"{topic_root}/telemetry/press/temperature"}

    observer = mqtt_client()
    observer.subscribe(f"{topic_root}/#", qos=1)
    publisher = mqtt_client()
    publisher.publish(f"{topic_root}/state/press", b"{}", qos=1)
    observer.sync()
    assert first_tree_problem(observer, topic_root, ("press",)) == ""
    publisher.publish(f"{topic_root}/State/press", b"{}", qos=1)
    observer.sync()
    assert first_tree_problem(observer, topic_root, ("press",)).startswith("{root}/State/press:")


@pytest.mark.broker_needs("log")
def test_launcher_passes_more_device_options_and_start_controller_starts_the_role(
    broker, factory_launcher
) -> None:
    from mqtt_factory_lab.brokers.mosquitto_log import connections
    from mqtt_factory_lab.experiment import unique
    from mqtt_factory_lab.fixtures.factory import start_controller

    launcher = factory_launcher()
    mark = broker.log_mark()
    oven = launcher.start_device("oven", "oven-k1", options={"keepalive": 1})
    logged = [c for c in connections(broker.log_lines()[mark:]) if c.client_id == oven.client_id]
    assert logged and logged[0].keepalive == 1, logged
    controller = start_controller(launcher, unique("controller"), "oven-k1/temperature=oven-k1")
    assert controller.is_running() and controller.role == "controller"


def test_seed_devices_come_online_through_the_launcher(factory_launcher, mqtt_client) -> None:
    from mqtt_factory_lab.experiment.topics import seed_devices_online, stop_all

    launcher = factory_launcher()
    observer = mqtt_client()
    observer.subscribe(f"{launcher.topic_root}/#", qos=1)
    handles = seed_devices_online(launcher, observer, ("press", "oven"))
    assert set(handles) == {"press", "oven"}
    assert all(h.status["status"] == "online" for h in handles.values())
    stop_all(handles)
    assert not any(h.process.is_running() for h in handles.values())


# -- experiment: wait_or_fail, remember_mids ------------------------------------------------


def test_wait_or_fail_returns_once_true_and_fails_with_the_lessons_words() -> None:
    calls = iter([False, False, True])
    wait_or_fail(lambda: next(calls), timeout=2, why=lambda: "never said")
    seen = []
    with pytest.raises(AssertionError, match=r"^the world at the deadline: 3$") as failure:
        wait_or_fail(
            lambda: seen.append(1) and False,
            timeout=0.05,
            why=lambda: f"the world at the deadline: {3}",
        )
    assert seen and not isinstance(failure.value, ProcessTimeout)


def test_remember_mids_acknowledges_only_when_told(mqtt_client, topic_root) -> None:
    topic = f"{topic_root}/quality"
    client_id = f"manual-{topic_root.split('/')[1]}"
    session = {"clean_start": False, "session_expiry": 60}
    receiver = mqtt_client(client_id, connect=False, **session)
    mids = remember_mids(receiver, topic)
    receiver.connect()
    receiver.subscribe(topic, qos=1)
    mqtt_client().publish(topic, b"one", qos=1)
    receiver.wait_for_message(topic)
    assert len(mids) == 1 and receiver.received(topic)[0].payload == b"one"
    receiver.sync()
    receiver.drop()  # never acknowledged: the broker must send it again
    back = mqtt_client(client_id, **session)
    again = back.wait_for_message(topic, queued=True)
    assert again.payload == b"one" and again.dup


# -- experiment.wills, experiment.acl -------------------------------------------------------


def test_wills_are_the_factorys_offline_status() -> None:
    topic, payload, qos, retain = will_of("r/status/press-01", "press-01")
    assert (topic, qos, retain) == ("r/status/press-01", 1, True)
    assert (
        json.loads(payload)["status"] == "offline" and json.loads(payload)["reason"] == "last-will"
    )
    assert status("press-01", "online", "connected")["status"] == "online"
    offline = message("r/status/press-01", payload.encode())
    assert says_offline(offline) and not says_offline(message("r/status/press-01", b"oops"))
    assert says_offline_on("r/status/press-01")(offline)
    assert not says_offline_on("r/status/oven-01")(offline)


def test_acl_helpers_tell_messages_apart_and_name_the_rule() -> None:
    press = MatrixClient("press-01")
    assert probe(press, "state") != probe(press, "state")
    assert b"by press-01" in probe(press, "state")
    assert "pattern write" in how_to_allow(press, "write", "factory/state/press-01")
    dashboard = MatrixClient("dashboard", "the dashboard", username="dashboard")
    assert how_to_allow(dashboard, "read", "t") == "a `topic read t` line under `user dashboard`"


def test_parties_keep_one_connection_per_client_id(broker, mqtt_client) -> None:
    party = Parties(mqtt_client, broker)
    press = MatrixClient(f"press-{id(party)}")
    assert party(press) is party(press)


# -- brokers.mosquitto_log ------------------------------------------------------------------

LOG_LINES = [
    "1700000000: Sending PUBLISH to dc-1 (d0, q1, r0, m7, 'r/s8/packer-03/quality', ... (42 bytes))",
    "1700000000: Sending PUBLISH to dc-1 (d1, q1, r0, m8, 'r/s8/packer-03/quality', ... (42 bytes))",
    "1700000000: Sending PUBLISH to dc-1 (d0, q0, r0, m0, 'r/s8/packer-03/quality', ... (42 bytes))",
    "1700000000: Sending PUBLISH to dc-10 (d0, q1, r0, m9, 'r/s8/packer-03/quality', ... (42 bytes))",
    "1700000000: Received PUBACK from dc-1 (Mid: 7, RC:0)",
    "1700000000: Received PUBACK from dc-10 (Mid: 9, RC:0)",
    "1700000000: Denied PUBLISH from press-01 (d0, q1, r0, m1, 'factory/state/oven-01', ... (3 bytes))",
]


def test_log_parsers_read_qos1_publishes_and_pubacks_of_one_client() -> None:
    assert qos1_sent_to(LOG_LINES, "dc-1", "r/s8/packer-03/quality") == {7, 8}
    assert qos1_sent_to(LOG_LINES, "dc-1", "r/other") == set()
    assert pubacks_from(LOG_LINES, "dc-1") == {7}
    assert pubacks_from(LOG_LINES, "dc-10") == {9}


def test_routed_to_reads_where_the_broker_sent_a_publish_before_it_acknowledged_it() -> None:
    lines = [
        "1: Received PUBLISH from dash (d0, q1, r0, m3, 'r/commands/press-01', ... (5 bytes))",
        "1: Sending PUBLISH to press-01 (d0, q1, r0, m1, 'r/commands/press-01', ... (5 bytes))",
        "1: Sending PUBLISH to spy (d0, q0, r0, m0, 'r/commands/press-01', ... (5 bytes))",
        "1: Sending PUBACK to dash (m3, rc0)",
        "1: Received PUBLISH from dash (d0, q1, r0, m4, 'r/commands/press-01', ... (5 bytes))",
    ]
    assert routed_to(lines, "dash", "r/commands/press-01") == ["press-01", "spy"]
    assert routed_to(lines[3:], "dash", "r/commands/press-01") is None  # not acknowledged yet
    assert routed_to(lines[:1] + lines[3:4], "dash", "r/commands/press-01") == []
    assert routed_to(lines, "other", "r/commands/press-01") is None


@pytest.mark.broker_needs("log")
def test_mosquitto_routes_a_qos1_publish_before_it_acknowledges_it(
    broker, mqtt_client, topic_root
) -> None:
    """What lesson 05 relies on to see at once that a command reached no subscriber."""
    subscriber = mqtt_client()
    subscriber.subscribe(f"{topic_root}/heard", qos=1)
    publisher = mqtt_client()
    mark = broker.log_mark()
    publisher.publish(f"{topic_root}/heard", b"1", qos=1)
    publisher.publish(f"{topic_root}/unheard", b"2", qos=1)

    def routes() -> tuple[list[str], list[str]] | None:
        lines = broker.log_lines()[mark:]
        heard = routed_to(lines, publisher.client_id, f"{topic_root}/heard")
        unheard = routed_to(lines, publisher.client_id, f"{topic_root}/unheard")
        return None if heard is None or unheard is None else (heard, unheard)

    assert wait_until(routes, timeout=5) == ([subscriber.client_id], [])


def test_denials_quote_the_brokers_denied_publish_lines() -> None:
    class LoggedBroker:
        def log_lines(self) -> list[str]:
            return LOG_LINES

    found = denials(LoggedBroker(), 0, "press-01", "factory/state/oven-01")  # type: ignore[arg-type]
    assert found == [LOG_LINES[-1]]
    assert denials(LoggedBroker(), 0, "press-01", "factory/state/press-01") == []  # type: ignore[arg-type]


# -- core.traceability ----------------------------------------------------------------------


def test_records_are_schema_valid_and_carry_a_fresh_msg_id() -> None:
    one, two = record("batch", "s8_packaging"), record("batch", "s8_packaging")
    assert one["msg_id"] != two["msg_id"] and one["machine"] == MACHINE["s8_packaging"]
    assert record("quality", "s5_tempering", check=False, result="maybe")["result"] == "maybe"
    with pytest.raises(Exception, match="maybe"):
        record("quality", "s5_tempering", result="maybe")
    assert topic_of("r", "s5_tempering", "temper-01", "state") == (
        "r/tunis-01/line-a/s5_tempering/temper-01/state"
    )
    assert msg_id_of(json.dumps(one).encode()) == one["msg_id"]
    assert msg_id_of(b"not json") is None and msg_id_of(b"[1]") is None
    messages = [
        message("t", json.dumps({"msg_id": "a"}).encode(), qos=1),
        message("t", json.dumps({"msg_id": "b"}).encode(), qos=0),
    ]
    assert qos1_ids(messages) == {"a"}


def test_database_reads_the_two_contract_tables_without_locking_them(tmp_path: Path) -> None:
    database = Database(tmp_path / "dc.db")
    assert "never created its database" in database.describe() and database.messages() == []
    connection = sqlite3.connect(database.path)
    connection.execute("CREATE TABLE mqtt_messages (topic TEXT, payload TEXT, qos INTEGER)")
    assert "has no table dead_letters" in database.describe()
    connection.execute("CREATE TABLE dead_letters (topic TEXT, payload BLOB, reason TEXT)")
    rows = [("t", json.dumps({"msg_id": i}), 1) for i in ("a", "a", "b")]
    connection.executemany("INSERT INTO mqtt_messages VALUES (?, ?, ?)", rows)
    connection.execute("INSERT INTO dead_letters VALUES ('t', ?, 'not JSON')", (b"\xff",))
    connection.commit()
    assert database.msg_ids() == {"a": 2, "b": 1}
    assert database.dead_letters() == [("t", b"\xff", "not JSON")]
    assert database.describe() == "its database holds 3 message(s)"
    connection.close()
    with pytest.raises(sqlite3.OperationalError, match="readonly"):  # it reads, never writes
        sqlite3.connect(f"file:{database.path}?mode=ro", uri=True).execute(
            "DELETE FROM mqtt_messages"
        )


def test_forward_truth_follows_lots_through_every_step_and_rework() -> None:
    def lot(name: str, material: str = "intermediate") -> dict[str, str]:
        return {"lot": name, "material": material}

    events = {
        "B1": [
            {
                "batch_id": "B1",
                "step": "s2",
                "attempt": 1,
                "inputs": [lot("HZP")],
                "outputs": [lot("M1")],
            },
            {
                "batch_id": "B1",
                "step": "s8",
                "attempt": 1,
                "inputs": [lot("M1")],
                "outputs": [lot("FG1", "finished_chocolate")],
            },
            {
                "batch_id": "B1",
                "step": "s8",
                "attempt": 2,
                "inputs": [lot("M1")],
                "outputs": [lot("FG2", "finished_chocolate")],
            },
        ],
        "B2": [
            {
                "batch_id": "B2",
                "step": "s8",
                "attempt": 1,
                "inputs": [lot("SUG")],
                "outputs": [lot("FG3", "finished_chocolate")],
            },
        ],
    }

    class Run:
        def batch_events(self) -> dict:
            return events

    assert forward_truth(Run(), "HZP") == {"FG1", "FG2"}  # type: ignore[arg-type]
    assert forward_truth(Run(), "SUG") == {"FG3"}  # type: ignore[arg-type]
    packed = [
        {"event": "step_completed", "step": "s8_packaging", "outputs": [lot("FG1")]},
        {"event": "step_completed", "step": "s8_packaging", "outputs": [lot("FG2")]},
    ]
    assert last_packaging_outputs(packed) == {"FG2"} and last_packaging_outputs([]) == set()


# -- experiment.qos, experiment.sessions ----------------------------------------------------


def test_qos_payloads_and_evidence() -> None:
    from mqtt_factory_lab.experiment.qos import alarm, by_qos, telemetry

    assert telemetry("press", 3)["seq"] == 3 and telemetry("press", 3)["sensor"] == "temperature"
    assert alarm("press", "temperature", "raised", 97.0)["state"] == "raised"
    assert "back below 90" in alarm("press", "temperature", "cleared", 80.0)["message"]
    seen = [message("lab/1/factory/telemetry/press/t", b"{}", qos=1) for _ in range(3)]
    assert by_qos(seen, "lab/1/factory") == "    {root}/telemetry/press/t at QoS 1 (x3)"


def test_granted_qos_reads_the_suback_and_packet_log_records_paho(mqtt_client, topic_root) -> None:
    from mqtt_factory_lab.experiment.qos import PacketLog, granted_qos, qos2_watcher

    client = mqtt_client(connect=False)
    log = PacketLog(client)
    client.connect()
    assert granted_qos(client.subscribe(f"{topic_root}/x", qos=1)) == 1
    assert log.find(r"Sending SUBSCRIBE") and not log.find(r"no such packet")
    watcher = qos2_watcher(mqtt_client, f"{topic_root}/#")
    mqtt_client().publish(f"{topic_root}/x", b"1", qos=1)
    assert watcher.wait_for_message(f"{topic_root}/x").qos == 1


def test_session_settings_and_causes_without_a_log() -> None:
    from mqtt_factory_lab.experiment.sessions import alarm, command_names, session, which_cause

    assert session("5", False) == {"protocol": "5", "clean_start": True}
    assert session("5", True, expiry=7)["session_expiry"] == 7
    assert session("3.1.1", True)["session_expiry"] is None
    assert alarm("raised", 231.0)["severity"] == "critical"
    stop = message("r/commands/c/conveyor-01", b'{"command": "stop", "reason": "alarm"}')
    assert command_names([stop]) == ["stop"]

    class NoLog:
        capabilities: frozenset[str] = frozenset()

    assert which_cause(NoLog(), 0, "c", "5", None).startswith("Keep the session")  # type: ignore[arg-type]
