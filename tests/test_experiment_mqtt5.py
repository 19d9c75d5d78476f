"""Lesson 09's clients, waits, verdicts and fixtures, moved out of the chapter (issue 21), keep their promise.

The helpers of :mod:`mqtt_factory_lab.experiment.mqtt5` and the fixtures of
:mod:`mqtt_factory_lab.fixtures.mqtt5` that ``labs/09_mqtt5.py`` relies on since it fits in
~500 lines, each held to what the chapter needs: verdicts say the MQTT rule and return None
for a conforming answer, waits return what arrived, clients are what they claim, against a
real broker where they talk to one. The older lesson 09 instruments are held in
``tests/test_experiment_mqtt5_tls.py``; ``tests/test_lesson_09.py`` proves the experiments
built on all of them can still fail.
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
from mqtt_factory_lab.core.client import ReceivedMessage
from mqtt_factory_lab.experiment.acl import publish_for_ack
from mqtt_factory_lab.experiment.mqtt5 import (
    SharedWorkers,
    acknowledging_by_hand,
    command_expiry_problem,
    disconnect_with_reason,
    is_protocol_refusal,
    marked_utf8_problem,
    payload_labels,
    props,
    publish_until_delivered,
    received_by_now,
    received_by_qos0_marker,
    retained_states,
    split_problem,
    start_expiry_clocks,
    suback_problem,
    subscribed,
    subscription_ids,
    wire,
)


def message(topic: str, payload: bytes = b"{}", **properties) -> ReceivedMessage:
    return ReceivedMessage(
        topic=topic, payload=payload, qos=1, retain=False, dup=False, properties=properties
    )


def granted(qos: int) -> ReasonCode:
    return ReasonCode(PacketTypes.SUBACK, identifier=qos)


# -- what a payload is, and the bytes it goes out as ----------------------------------------


def test_payload_labels_and_wire_read_and_write_what_a_message_carries() -> None:
    labelled = message(
        "r/t", UserProperty=[["schema", "vf.telemetry/1"]], ContentType="application/json"
    )
    assert payload_labels(labelled) == ([("schema", "vf.telemetry/1")], "application/json", None)
    assert payload_labels(message("r/t")) == ([], None, None)
    assert wire({"command": "start"}) == b'{"command":"start"}'
    assert wire("stop") == b"stop"
    assert wire(b"\xff") == b"\xff"


@pytest.mark.parametrize(
    ("answer", "refused"),
    [
        pytest.param(b"", True, id="closed-at-once"),
        pytest.param(b"\x20\x02\x00\x01", True, id="mqtt311-return-code-1"),
        pytest.param(b"\x20\x03\x00\x84\x00", True, id="mqtt5-0x84"),
        pytest.param(b"\x20\x02\x00\x00", False, id="mqtt311-accepted"),
        pytest.param(b"\x20\x03\x00\x00\x00", False, id="mqtt5-success"),
        pytest.param(b"\x90\x03\x00\x01\x00", False, id="not-a-connack"),
    ],
)
def test_is_protocol_refusal_accepts_only_a_close_or_a_refusing_connack(answer, refused) -> None:
    assert is_protocol_refusal(answer) is refused


# -- verdicts ---------------------------------------------------------------------------------


def test_suback_problem_wants_one_code_per_filter_at_most_the_qos_asked() -> None:
    filters = [("r/alarms/#", 2), ("r/telemetry/+/t", 0), ("r/state/+", 1)]
    assert suback_problem(filters, [granted(2), granted(0), granted(1)]) is None
    assert suback_problem(filters, [granted(1), granted(0), granted(0)]) is None  # less: fine
    too_few = suback_problem(filters, [granted(2), granted(0)])
    assert too_few is not None and "MQTT-3.8.4-6" in too_few
    swapped = suback_problem(filters, [granted(2), granted(1), granted(0)])
    assert swapped is not None and "r/telemetry/+/t asked QoS 0" in swapped
    refused = suback_problem(
        filters, [granted(2), granted(0), ReasonCode(PacketTypes.SUBACK, "Not authorized")]
    )
    assert refused is not None and "0x87 Not authorized" in refused


def test_split_problem_counts_missing_and_doubled_messages_across_the_group() -> None:
    sent = [b"a", b"b", b"c"]
    split = [[message("r/x", b"a"), message("r/x", b"c")], [message("r/x", b"b")]]
    assert split_problem("$share/g/r/#", sent, split) is None
    doubled = split_problem("$share/g/r/#", sent, [[message("r/x", p) for p in sent]] * 2)
    assert doubled is not None and "doubled: [b'a', b'b', b'c']" in doubled
    lost = split_problem("$share/g/r/#", sent, [[message("r/x", b"a")], []])
    assert lost is not None and "missing: [b'b', b'c']" in lost and "MQTT 5 §4.8.2" in lost


def test_subscription_ids_group_the_identifiers_by_device() -> None:
    got = subscription_ids(
        [
            message("r/alarms/press-01/t", SubscriptionIdentifier=[1]),
            message("r/alarms/press-01/t", SubscriptionIdentifier=[2]),
            message("r/alarms/oven-01/t", SubscriptionIdentifier=[1]),
            message("r/alarms/conveyor-01/t"),
        ]
    )
    assert got == {"press-01": {1, 2}, "oven-01": {1}, "conveyor-01": set()}


@pytest.mark.parametrize(
    ("expiry", "ok"),
    [(30, True), (3600, True), (None, False), (0, False), (3601, False)],
    ids=["30s", "an-hour", "none", "zero", "over-an-hour"],
)
def test_command_expiry_problem_wants_an_interval_of_at_most_an_hour(expiry, ok) -> None:
    properties = {} if expiry is None else {"MessageExpiryInterval": expiry}
    problem = command_expiry_problem(message("r/commands/controller/conveyor-01", **properties))
    assert (problem is None) is ok, problem
    if not ok:
        assert f"MessageExpiryInterval={expiry!r}" in problem
        assert "set properties.MessageExpiryInterval" in problem


# -- clients and waits, against a real broker ------------------------------------------------


def test_subscribed_and_received_by_now_see_everything_queued(mqtt_client, topic_root) -> None:
    topic = f"{topic_root}/commands/+/conveyor-01"
    dashboard = subscribed(mqtt_client, topic, qos=1, no_local=True)
    dashboard.publish(f"{topic_root}/commands/dashboard/conveyor-01", b"own", qos=1)
    mqtt_client().publish(f"{topic_root}/commands/controller/conveyor-01", b"other", qos=1)
    assert dashboard.granted_qos(topic) == 1
    dashboard.wait_for_message(topic)
    assert [m.payload for m in received_by_now(dashboard, topic)] == [b"other"]  # no local held


def test_disconnect_with_reason_returns_once_the_connection_is_closed(mqtt_client) -> None:
    client = mqtt_client()
    disconnect_with_reason(client, "Normal disconnection")
    assert not client.connected


def test_publish_until_delivered_returns_when_a_plain_subscriber_has_them_all(
    mqtt_client, topic_root
) -> None:
    topic = f"{topic_root}/line/batch"
    other = subscribed(mqtt_client, topic, qos=1)
    publish_until_delivered(mqtt_client, topic, [b"1", b"2", b"3"])
    assert [m.payload for m in received_by_now(other, topic)] == [b"1", b"2", b"3"]


def test_the_qos0_marker_arrives_while_receive_maximum_holds_records_back(
    mqtt_client, topic_root
) -> None:
    records = f"{topic_root}/line/batch"
    slow = acknowledging_by_hand(mqtt_client, connect_properties={"ReceiveMaximum": 1})
    slow.subscribe(records, qos=1)
    line = mqtt_client()
    for i in range(3):
        line.publish(records, f"record-{i}", qos=1)
    held = received_by_qos0_marker(slow, line, records)
    assert [m.payload for m in held] == [b"record-0"], "one in flight, none acknowledged"
    slow.paho.ack(held[0].mid, 1)  # acknowledged by hand: the next one comes
    assert len(slow.wait_for_messages(2, records)) == 2


def test_marked_utf8_problem_accepts_a_forwarded_mark_or_a_0x99_refusal(
    mqtt_client, topic_root
) -> None:
    topic = f"{topic_root}/telemetry/press-01/temperature"
    dashboard = subscribed(mqtt_client, topic, qos=1)
    press = mqtt_client()
    marked = props(PayloadFormatIndicator=1)
    code = publish_for_ack(press, topic, b"\xff\xfe", properties=marked)
    assert marked_utf8_problem(press, code, dashboard, topic) is None  # Mosquitto forwards it

    dashboard.clear()
    code = publish_for_ack(press, topic, b"text", properties=marked)
    assert "decoded as UTF-8" in marked_utf8_problem(press, code, dashboard, topic)

    dashboard.clear()
    publish_for_ack(press, topic, b"\xff", properties=props(PayloadFormatIndicator=0))
    dashboard.wait_for_message(topic)
    lost_mark = marked_utf8_problem(press, code, dashboard, topic)
    assert lost_mark is not None and "MQTT-3.3.2-4" in lost_mark

    quiet = subscribed(mqtt_client, f"{topic_root}/nothing", qos=1)
    refused = ReasonCode(PacketTypes.PUBACK, "Payload format invalid")
    assert marked_utf8_problem(press, refused, quiet, f"{topic_root}/nothing") is None
    denied = ReasonCode(PacketTypes.PUBACK, "Not authorized")
    wrong = marked_utf8_problem(press, denied, quiet, f"{topic_root}/nothing")
    assert wrong is not None and "0x99 Payload format invalid" in wrong and "0x87" in wrong


def test_retained_states_reads_each_devices_state_against_its_schema(
    device, mqtt_client, topic_root
) -> None:
    device("press", "press-01")
    states = retained_states(mqtt_client(), topic_root, ["press-01"])
    assert validate("state", states["press-01"])["device_id"] == "press-01"


def test_controller_back_gets_only_the_alarm_that_has_not_expired(mqtt_client, topic_root) -> None:
    clocks = start_expiry_clocks(lambda cid=None, **kw: mqtt_client(cid, **kw), topic_root)
    alarms = clocks.controller_back(mqtt_client)
    assert [json.loads(m.payload)["value"] for m in alarms] == [240.0]
    assert 0 < alarms[0].properties["MessageExpiryInterval"] <= 60


# -- the fixtures: the solution's programs on MQTT 5 -----------------------------------------


def test_mqtt5_devices_are_online_when_they_are_returned(
    mqtt5_devices, mqtt_client, topic_root
) -> None:
    assert mqtt5_devices("press", "oven") == ["press-01", "oven-01"]
    watcher = subscribed(mqtt_client, f"{topic_root}/status/+", qos=1)
    statuses = {m.topic: m.json()["status"] for m in received_by_now(watcher)}
    assert statuses == {
        f"{topic_root}/status/press-01": "online",
        f"{topic_root}/status/oven-01": "online",
    }


def test_mqtt5_controller_is_started_and_ready(mqtt5_controller) -> None:
    controller = mqtt5_controller(rules="press-01/temperature=conveyor-01")
    assert controller.is_running() and controller.role == "controller"


def test_shared_datacenter_starts_two_workers_and_kill_first_ends_one(
    shared_datacenter, mqtt_client, topic_root
) -> None:
    workers = shared_datacenter("datacenter-test")
    assert [name.split("-")[:2] for name in workers.names] == [["dc", "a"], ["dc", "b"]]
    assert all(worker.is_running() for worker in workers.processes)
    dead = workers.kill_first(mqtt_client)
    assert dead == workers.names[0]
    assert not workers.processes[0].is_running() and workers.processes[1].is_running()


def stored_by(tmp_path: Path, *rows: list[str]) -> SharedWorkers:
    """Workers (no programs) whose databases hold ``rows``: a list of msg_ids per worker."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    databases = []
    for n, ids in enumerate(rows):
        path = tmp_path / f"{n}.db"
        with sqlite3.connect(path) as connection:
            connection.execute("CREATE TABLE mqtt_messages (topic TEXT, payload TEXT, qos INT)")
            connection.executemany(
                "INSERT INTO mqtt_messages VALUES ('t', ?, 1)",
                [(json.dumps({"msg_id": i}),) for i in ids],
            )
        connection.close()
        databases.append(path)
    return SharedWorkers([], databases)


def test_share_problem_names_a_record_stored_by_both_or_a_worker_that_stored_none(
    tmp_path: Path,
) -> None:
    ids = ["m1", "m2", "m3"]
    assert stored_by(tmp_path / "split", ["m1", "m3"], ["m2"]).share_problem("g", ids) is None
    both = stored_by(tmp_path / "both", ids, ids).share_problem("g", ids)
    assert both is not None and "3 of 3 QoS 1 records were stored by both" in both
    assert "$share/g/<filter>" in both
    idle = stored_by(tmp_path / "idle", ids, []).share_problem("g", ids)
    assert idle is not None and "one of them stored nothing (3 and 0)" in idle


def test_settle_returns_at_once_when_both_stored_and_after_its_timeout_otherwise(
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    stored_by(tmp_path / "split", ["m1"], ["m2"]).settle(["m1", "m2"], timeout=5)
    assert time.monotonic() - started < 1
    started = time.monotonic()
    stored_by(tmp_path / "idle", ["m1", "m2"], []).settle(["m1", "m2"], timeout=0.2)
    assert 0.2 <= time.monotonic() - started < 2
