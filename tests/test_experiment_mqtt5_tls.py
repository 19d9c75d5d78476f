"""The instruments lessons 06, 08 and 09 use, moved out of the chapters (issue 21), keep their promise.

Each helper is held here to what the chapters rely on, against a real broker where it talks
to one: lesson 09's properties, expiry clocks, setpoint requests and shared workers
(:mod:`mqtt_factory_lab.experiment.mqtt5`), lesson 08's broker-log readers
(:mod:`mqtt_factory_lab.experiment.tls`), lesson 06's cell proofs and the helpers 06, 08
and 09 share (:mod:`mqtt_factory_lab.experiment.acl`), and the client-factory tail of
``mqtt_client`` and ``tls_client`` (:class:`mqtt_factory_lab.fixtures.brokers.Clients`).
The lessons' broken variants (``tests/test_lesson_0[689].py``) prove the experiments built
on them can still fail.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from mqtt_factory_lab.contract import validate
from mqtt_factory_lab.core.acl import parse_matrix
from mqtt_factory_lab.core.client import ReceivedMessage, RecordingClient
from mqtt_factory_lab.core.roles import RoleError
from mqtt_factory_lab.experiment.acl import (
    Parties,
    PublishTried,
    denied_lines,
    refused_login,
    round_trip,
    try_publish_cell,
    try_read_cell,
    why_undelivered,
)
from mqtt_factory_lab.experiment.mqtt5 import (
    SharedWorkers,
    alarm,
    answer_problem,
    ask_setpoints,
    by_kind,
    connect_with_protocol_level,
    label_problem,
    props,
    publish_records,
    reason,
    start_expiry_clocks,
    user_properties,
    wait_until_expired,
)
from mqtt_factory_lab.experiment.tls import (
    client_ids_logged,
    connect_together,
    identities_logged,
    probe,
    says_why,
    start_or_fail,
)
from mqtt_factory_lab.fixtures.brokers import Clients


class LoggedBroker:
    """Just a broker's log, for the helpers that only read it."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def log_lines(self) -> list[str]:
        return self.lines


def message(topic: str, payload: bytes = b"{}", **properties) -> ReceivedMessage:
    return ReceivedMessage(
        topic=topic, payload=payload, qos=1, retain=False, dup=False, properties=properties
    )


# -- experiment.mqtt5: properties, reason codes, raw CONNECT --------------------------------


def test_props_reason_and_user_properties_speak_pahos_names() -> None:
    built = props(MessageExpiryInterval=5, UserProperty=[("schema", "vf.alarm/1")])
    assert built.MessageExpiryInterval == 5
    assert built.UserProperty == [("schema", "vf.alarm/1")]
    assert reason(None) == "no reason code (paho: success)"
    assert reason(ReasonCode(PacketTypes.PUBACK, "Not authorized")) == "0x87 Not authorized"
    labelled = message("r/telemetry/p/t", UserProperty=[["schema", "vf.telemetry/1"], ["a", "b"]])
    assert user_properties(labelled) == [("schema", "vf.telemetry/1"), ("a", "b")]
    assert user_properties(message("r/t")) == []
    assert validate("alarm", alarm("cleared", 205.0))["state"] == "cleared"


def test_connect_with_protocol_level_6_is_refused_and_closed(broker) -> None:
    answer = connect_with_protocol_level(broker, level=6)
    assert answer == b"" or answer[0] == 0x20, f"a CONNACK or nothing, then the close: {answer!r}"


def test_by_kind_groups_messages_by_their_first_level_below_the_root() -> None:
    found = by_kind("r", [message("r/telemetry/p/t"), message("r/state/p"), message("r/state/o")])
    assert {kind: len(m) for kind, m in found.items()} == {"telemetry": 1, "state": 2}


# -- experiment.mqtt5: the broker's expiry clock ----------------------------------------------


def test_wait_until_expired_fails_while_delivered_and_returns_once_gone(
    mqtt_client, topic_root
) -> None:
    lasting, expiring = f"{topic_root}/state/lasting", f"{topic_root}/state/expiring"
    press = mqtt_client()
    press.publish(lasting, b"stays", qos=1, retain=True)
    press.publish(expiring, b"goes", qos=1, retain=True, properties=props(MessageExpiryInterval=1))
    with pytest.raises(AssertionError, match=r"MQTT-3\.3\.2-5"):
        wait_until_expired(mqtt_client, lasting, timeout=0.3)
    wait_until_expired(mqtt_client, expiring)  # within the broker's second or two
    press.publish(lasting, b"", qos=1, retain=True)  # leave no retained message behind


def test_start_expiry_clocks_queues_alarms_and_reads_the_state_before_it_expires(
    mqtt_client, topic_root
) -> None:
    clocks = start_expiry_clocks(lambda cid=None, **kw: mqtt_client(cid, **kw), topic_root)
    assert clocks.alarms == f"{topic_root}/alarms/press-01/temperature"
    assert clocks.early_state.json() == {"state": "running"}
    assert clocks.early_state.properties.get("MessageExpiryInterval", 99) <= 1
    fresh = mqtt_client()
    fresh.subscribe(clocks.clock, qos=1)
    fresh.wait_for_message(clocks.clock, why="the 2 s clock is still retained at once")
    back = mqtt_client(clocks.controller_id, clean_start=False, session_expiry=60)
    queued = back.wait_for_messages(1, clocks.alarms, why="the session holds the alarms")
    assert all(validate("alarm", m.payload)["device_id"] == "press-01" for m in queued)


# -- experiment.mqtt5: the solution's programs ------------------------------------------------


def test_label_problem_names_the_missing_schema_label_or_content_type() -> None:
    labelled = message(
        "r/telemetry/p/t",
        UserProperty=[["schema", "vf.telemetry/1"]],
        ContentType="application/json",
    )
    assert label_problem("telemetry", labelled, "vf.telemetry/1") is None
    unlabelled = message("r/telemetry/p/t", ContentType="application/json")
    assert "schema=vf.telemetry/1" in label_problem("telemetry", unlabelled, "vf.telemetry/1")
    untyped = message("r/telemetry/p/t", UserProperty=[["schema", "vf.telemetry/1"]])
    assert "application/json" in label_problem("telemetry", untyped, "vf.telemetry/1")


def test_ask_setpoints_labels_each_request_and_answer_problem_reads_the_reply(
    mqtt_client, topic_root
) -> None:
    device = mqtt_client()
    device.subscribe(f"{topic_root}/commands/controller/+", qos=1)
    asker = mqtt_client()
    labels = ask_setpoints(asker, topic_root, ["press-01", "oven-01"], f"{topic_root}/replies/x")
    requests = device.wait_for_messages(2, why="both requests are in flight")
    assert {bytes.fromhex(m.properties["CorrelationData"]) for m in requests} == set(
        labels.values()
    )
    assert all(m.properties["ResponseTopic"] == f"{topic_root}/replies/x" for m in requests)

    setpoints = {"temperature": 180.0}
    states = {"press-01": {"setpoints": setpoints}, "oven-01": {"setpoints": setpoints}}
    body = json.dumps(
        validate(
            "setpoints_reply",
            {
                "ts": time.time(),
                "device_id": "press-01",
                "state": "running",
                "setpoints": setpoints,
            },
        )
    ).encode()
    right = message("r", body, CorrelationData=labels["press-01"].hex())
    assert answer_problem(right, labels, states) is None
    assert "without Correlation Data" in answer_problem(message("r", body), labels, states)
    wrong = message("r", body, CorrelationData=labels["oven-01"].hex())
    assert "*its own* Correlation Data" in answer_problem(wrong, labels, states)


def test_shared_workers_count_each_workers_rows_and_what_is_lost_or_twice(
    tmp_path: Path, mqtt_client, topic_root
) -> None:
    line, watcher = mqtt_client(), mqtt_client()
    watcher.subscribe(f"{topic_root}/#", qos=1)
    ids = publish_records(line, topic_root, 6)
    got = watcher.wait_for_messages(6, why="the records reach a subscriber")
    assert len(set(ids)) == 6 and {json.loads(m.payload)["msg_id"] for m in got} == set(ids)

    databases = [tmp_path / "a.db", tmp_path / "b.db"]
    for path, stored in zip(databases, (ids[:4], ids[3:5]), strict=True):
        with sqlite3.connect(path) as connection:
            connection.execute("CREATE TABLE mqtt_messages (topic TEXT, payload TEXT, qos INT)")
            connection.executemany(
                "INSERT INTO mqtt_messages VALUES ('t', ?, 1)",
                [(json.dumps({"msg_id": i}),) for i in stored],
            )
        connection.close()
    workers = SharedWorkers([], databases)
    assert workers.stored(ids) == [4, 2]
    assert workers.twice(ids) == [ids[3]]
    assert workers.lost(ids) == [ids[5]]
    workers.wait(lambda: True, 1, "never fail")


# -- experiment.tls: the broker log's identities -----------------------------------------------

TLS_LOG = [
    "1700000000: New client connected from 127.0.0.1:5000 as press-01 (p5, c1, k60, u'oven-01').",
    "1700000000: New client connected from 127.0.0.1:5001 as anon-1 (p5, c1, k60).",
    "1700000000: OpenSSL Error[0]: error:1417C086:SSL routines: certificate verify failed",
]


def test_tls_log_readers_name_the_certificate_identity_of_each_connection() -> None:
    broker = LoggedBroker(TLS_LOG)
    assert identities_logged(broker, 0) == {"press-01": "oven-01"}  # type: ignore[arg-type]
    assert client_ids_logged(broker, 0) == {"press-01", "anon-1"}  # type: ignore[arg-type]
    assert client_ids_logged(broker, 2) == set()  # type: ignore[arg-type]
    assert probe("press-01", "x") != probe("press-01", "x")
    assert says_why("the broker's certificate could not be verified") and not says_why("bye")


def test_connect_together_connects_every_client_and_raises_the_first_refusal(
    broker, mqtt_client, hardened
) -> None:
    first, second = mqtt_client(connect=False), mqtt_client(connect=False)
    connect_together(first, second, first)  # the same client twice is connected once
    assert first.connected and second.connected
    connect_together(first)  # nothing left to connect
    refused = mqtt_client("press-01", broker=hardened[0], connect=False)
    refused.paho.reconnect_delay_set(min_delay=0.05, max_delay=0.05)
    with pytest.raises(ConnectionError):
        connect_together(mqtt_client(connect=False), refused)
    refused.paho.disconnect()


def test_start_or_fail_quotes_the_handshake_refusal_the_broker_logged() -> None:
    def refused() -> None:
        raise RoleError("the press exited")

    with pytest.raises(pytest.fail.Exception) as failure:
        start_or_fail(refused, "the press", LoggedBroker(TLS_LOG), 0)  # type: ignore[arg-type]
    assert "could not verify against its CA" in str(failure.value)
    assert "the press exited" in str(failure.value)
    assert start_or_fail(lambda: "up", "the press", LoggedBroker([]), 0) == "up"  # type: ignore[arg-type]


# -- experiment.acl: what lessons 06, 08 and 09 share ------------------------------------------

MATRIX = """
[clients.press-01]
[clients.oven-01]
[clients.dashboard]
username = "dashboard"
[publish]
"factory/telemetry/press-01/temperature" = ["press-01"]
[subscribe]
"factory/telemetry/press-01/temperature" = ["dashboard"]
"""


def test_cells_are_tried_with_their_witness_and_control(lab_acl, mqtt_client) -> None:
    cells = {c.id: c for c in parse_matrix(MATRIX).cells("publish")}
    party = Parties(mqtt_client, lab_acl)
    denied = try_publish_cell(
        cells["oven-01-publish-factory/telemetry/press-01/temperature-denied"], party, lab_acl
    )
    assert denied.payload not in denied.got and denied.control in denied.got
    assert denied.answer.value == 0x87 and denied.denied, "MQTT 5 says 0x87; the log says why"
    allowed = try_publish_cell(
        cells["press-01-publish-factory/telemetry/press-01/temperature-allowed"], party, lab_acl
    )
    assert allowed.payload in allowed.got and not allowed.denied
    reads = {c.id: c for c in parse_matrix(MATRIX).cells("subscribe")}
    read = try_read_cell(
        reads["oven-01-subscribe-factory/telemetry/press-01/temperature-denied"], party, lab_acl
    )
    assert read.payload not in read.got and not read.refused
    assert read.control is not None
    round_trip(read.control)  # as the lesson does, before it reads the control
    assert read.control is not None and read.payload in {m.payload for m in read.control.received()}


def test_why_undelivered_tells_a_denied_write_from_a_denied_read() -> None:
    cell = next(c for c in parse_matrix(MATRIX).cells("publish") if c.allowed)
    refused = ReasonCode(PacketTypes.PUBACK, "Not authorized")
    success = ReasonCode(PacketTypes.PUBACK, "Success")
    written = why_undelivered(cell, PublishTried(b"p", None, refused, set(), ["Denied PUBLISH"]))
    assert "PUBACK 0x87" in written and "denies the write" in written
    read = why_undelivered(cell, PublishTried(b"p", None, success, set(), []))
    assert "denies dashboard reading" in read


def test_refused_login_returns_the_connack_code_of_a_turned_away_client(
    hardened, mqtt_client
) -> None:
    broker, _ = hardened
    impostor = mqtt_client("press-01", broker=broker, connect=False, password="guess")
    assert refused_login(impostor).value in (0x86, 0x87)
    assert not impostor.connected


def test_denied_lines_are_the_denials_of_the_named_clients_only() -> None:
    log = [
        "1: Denied PUBLISH from press-01 (d0, q1, r0, m1, 'factory/state/oven-01', ...)",
        "1: Denied PUBLISH from press-010 (d0, q1, r0, m1, 'factory/state/oven-01', ...)",
        "1: Received PUBLISH from press-01 (d0, q1, r0, m2, 'factory/state/press-01', ...)",
    ]
    assert denied_lines(LoggedBroker(log), 0, ["press-01"]) == [log[0]]  # type: ignore[arg-type]
    assert denied_lines(LoggedBroker(log), 1, iter(["press-01"])) == []  # type: ignore[arg-type]


# -- fixtures.brokers.Clients: the client factories' tail --------------------------------------


def test_clients_connect_on_demand_and_are_all_disconnected_at_the_end(broker) -> None:
    def client(name: str) -> RecordingClient:
        settings = broker.connection.for_protocol("5")
        return RecordingClient(settings.host, settings.port, name, connection=settings)

    with Clients() as clients:
        now = clients.add(client("clients-now"), connect=True)
        later = clients.add(client("clients-later"), connect=False)
        assert len(clients) == 2 and now.connected and not later.connected
        later.connect()
    assert not now.connected and not later.connected
