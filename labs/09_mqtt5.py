"""Lesson 09 — MQTT 5 in the factory: reason codes, expiry, properties, request/response, sharing.

MQTT 3.1.1 moves a topic and some bytes, and says little when something goes wrong. MQTT 5 keeps
that core and adds what factories kept reinventing, each taught below where the factory uses it.

* **Reason codes: the broker says why.** Every acknowledgement carries a one-byte reason (§2.4).
  CONNACK says why a login was refused: 0x86 *Bad user name or password*, 0x87 *Not authorized*
  (Mosquitto answers 0x87 to both, revealing nothing to a guesser); to a protocol version it
  does not speak a broker MAY answer 0x84 *Unsupported protocol version* (Mosquitto sends a
  3.1.1 CONNACK with return code 1), then closes the connection. PUBACK says 0x10 *No matching
  subscribers* — the alarm nobody listens to — and 0x87 when the ACL denies a publish:
  lesson 06's silent drop becomes visible. A SUBACK has one code per filter: the QoS granted
  (maybe less than asked) or a refusal (an ACL plugin's 0x87; Mosquitto's ``acl_file`` grants
  every SUBSCRIBE). A second connection with a client id in use ends the first, maybe with
  DISCONNECT 0x8E *Session taken over* (Mosquitto 2.0.11 just closes the socket). DISCONNECT
  0x04 *Disconnect with Will Message* leaves cleanly *and* has the will sent.
* **Message expiry.** A PUBLISH may carry a *message expiry interval*: a copy the broker could
  not start delivering before it passed is deleted (§3.3.2.3.3); a copy delivered later carries
  what is left. An alarm that waited an hour for a controller is history, not an emergency; a
  ``stop`` that waited for a conveyor must not stop it an hour late. A retained state with an
  expiry disappears with it: no dashboard shows a dead machine's last week.
* **Properties that say what a payload is.** *User properties* are key/value pairs the broker
  forwards unchanged and in order: the factory's devices label every payload with its schema,
  ``schema=vf.telemetry/1``, so a consumer can pick a parser (or refuse a version it does not
  know) without guessing from the topic. *Content type* (``application/json``) and the *payload
  format indicator* (1 = UTF-8 text) go along. A broker MAY check that a payload marked UTF-8 is
  UTF-8 (refusing it with 0x99 *Payload format invalid*); Mosquitto 2.0 does not and forwards
  the mark, so the receiver checks (as lesson 07's data center does).
* **Request / response.** The controller asks a device for its setpoints: it publishes the
  request with a *response topic* (where to answer) and *correlation data* (an opaque label);
  the device answers there with the same correlation data. With several requests in flight on
  one response topic, the label, not the order of arrival, says which answer is which.
* **Shared subscriptions.** Subscribers of ``$share/<group>/<filter>`` share one subscription:
  each message goes to *one* of them (§4.8.2). The data center scales out by starting a second
  worker on ``$share/datacenter/<root>/...``: every QoS 1 record is stored once across the two,
  and when one worker dies the broker sends the stream to the other. A message it was delivering
  to the dead worker waits for *that* session (MQTT-4.8.2-4, -5), so a worker that may die needs
  a persistent session and a restart (or an operator who ends its session).
* **Smaller tools, one experiment each.** *Topic aliases*: a telemetry publisher sends its long
  topic once, then a two-byte number. *Subscription identifiers*: a dashboard with several
  overlapping subscriptions learns which one delivered a message. *No local*: a dashboard
  watching the command topic does not hear its own commands. *Receive maximum*: a slow data
  center caps the unacknowledged QoS 1 messages the broker may push at it. *Maximum packet
  size*: a small device is never sent what it cannot hold; the broker drops that copy instead.
* **Session expiry and will delay**, MQTT 5 too, are taught in lessons 05 (sessions) and 04 (wills).

Pitfalls:

* Reading only ``rc == 0``: the reason code *is* the diagnosis (paho passes a named ``ReasonCode``).
* Properties on MQTT 3.1.1: there are none. A program that must speak both versions sends them
  only on MQTT 5 (the lab's reference programs do).

Try it (a broker on localhost:1884, e.g. ``mosquitto -p 1884``)::

    python -m sim.device --device press --device-id press-01 &
    mosquitto_sub -p 1884 -V 5 -t 'factory/telemetry/#' -F '%t %P %C'   # user property, type
    python -m sim.controller --ask-setpoints press-01                  # setpoints press-01 {...}
    python -m sim.datacenter --db a.db --client-id dc-a --share datacenter &
    python -m sim.datacenter --db b.db --client-id dc-b --share datacenter &
    python -m sim.chocolate --batches 2 --time-scale 20000              # each record in a or b
    mosquitto_pub -p 1884 -V 5 -q 1 -D publish message-expiry-interval 5 -t factory/a/b -m x

Your programs in this lesson: the ``[roles.device]`` role (on MQTT 5: every publish carries the
user property ``schema=vf.<schema>/1`` — ``vf.telemetry/1``, ``vf.alarm/1``, ``vf.state/1``,
``vf.status/1``, ``vf.event/1`` — and the content type ``application/json``; a message
``{"request": "setpoints"}`` on its command topic with a Response Topic is answered on that
topic, at QoS 1, with ``schemas/setpoints_reply.schema.json`` and the request's Correlation
Data); ``[roles.controller]`` (started as in lesson 05 with the rule
``press-01/temperature=conveyor-01``: on MQTT 5 its commands carry a message expiry interval of
at most an hour); ``[roles.datacenter]`` with the option ``share`` = ``{share}``, a group name
(subscribe through ``$share/{share}/...``; the lab starts two with their own ``{db}`` and kills
one with SIGKILL). See ``solution.toml``.

Run it: ``pytest labs/09_mqtt5.py -v`` (``-m broker`` for the broker's part, ``-m solution
--solution PATH`` to grade a solution). Without MQTT 5 the lesson is skipped, for that finding.
"""

from __future__ import annotations

import uuid

import pytest

from mqtt_factory_lab.contract import validate
from mqtt_factory_lab.core import process
from mqtt_factory_lab.experiment import mqtt5, unique
from mqtt_factory_lab.experiment.acl import publish_for_ack, refused_login
from mqtt_factory_lab.experiment.mqtt5 import PROMPT, alarm, props, reason, wire

pytestmark = [
    pytest.mark.lesson(9),
    pytest.mark.needs("mqtt5"),
    pytest.mark.usefixtures("expiry_clocks_started_ahead"),  # started ahead: fixtures/mqtt5.py
]

#: the logins a hardened broker refuses, and the CONNACK reason codes that may say why
REFUSED_LOGINS = [
    pytest.param({}, {0x87, 0x86}, id="anonymous"),
    pytest.param({"username": "press-01", "password": "guess"}, {0x86, 0x87}, id="wrong-password"),
]
#: DISCONNECT reason codes (paho's names), and whether the broker then sends the will
LEAVINGS = [
    pytest.param("Normal disconnection", False, id="0x00-normal"),
    pytest.param("Disconnect with will message", True, id="0x04-with-will"),
]
#: what the reference programs label each payload with (sim/mqtt5.py)
SCHEMA_LABELS = {
    "telemetry": "vf.telemetry/1",
    "alarms": "vf.alarm/1",
    "state": "vf.state/1",
    "status": "vf.status/1",
    "events": "vf.event/1",
}
#: the controller's rule in the command-expiry experiment (as in lesson 05)
RULE = "press-01/temperature=conveyor-01"
# Helpers: experiment.mqtt5; the programs and expiry clocks: fixtures.mqtt5 (ACLs: fixtures.acl)


# -- Reason codes: the broker says why -------------------------------------------------------
@pytest.mark.broker
@pytest.mark.parametrize(("login", "expected"), REFUSED_LOGINS)
@pytest.mark.spec(mqtt5=["MQTT-3.2.2-6", "MQTT-3.2.2-7", "MQTT-3.2.2-8"])
def test_connack_reason_code_says_why_a_login_was_refused(hardened, mqtt_client, login, expected):
    broker, _ = hardened
    impostor = mqtt_client("press-01", broker=broker, connect=False, **login)
    code = refused_login(impostor)
    who = "a wrong password" if login else "a client without a user name"
    assert code.value in expected, (
        f"A broker with `allow_anonymous false` and a password file refuses {who} in the "
        "CONNACK and MQTT 5 says why: 0x86 Bad user name or password or 0x87 Not "
        f"authorized (Mosquitto: 0x87 for both, telling a guesser nothing). It said {reason(code)}."
    )
    assert not impostor.connack["session_present"] and not impostor.connected, (
        "A refused CONNACK has session present 0 (MQTT-3.2.2-6); then the connection closes."
    )


@pytest.mark.broker
@pytest.mark.spec(mqtt5=["MQTT-3.1.2-2"])
def test_unsupported_protocol_version_is_refused_then_the_connection_closed(broker):
    answer = mqtt5.connect_with_protocol_level(broker, level=6)
    assert mqtt5.is_protocol_refusal(answer), (
        "A CONNECT with protocol level 6 (no such MQTT) is refused and the connection closed "
        "(MQTT-3.1.2-2), maybe after CONNACK 0x84 Unsupported protocol version (MQTT 5) or return "
        f"code 1 (the 3.1.1 format, which any client reads). It sent {answer!r}."
    )


@pytest.mark.broker
@pytest.mark.needs("qos1")
@pytest.mark.spec(mqtt5=["MQTT-3.4.2-1"])
def test_puback_says_no_matching_subscribers_only_when_nobody_listens(mqtt_client, topic_root):
    topic = f"{topic_root}/alarms/press-01/temperature"
    press = mqtt_client()
    alone = publish_for_ack(press, topic, alarm())
    controller = mqtt5.subscribed(mqtt_client, topic, qos=1)
    heard = publish_for_ack(press, topic, alarm("cleared", 205.0))
    controller.wait_for_message(topic, why="The controller subscribed before the second alarm.")
    assert alone.value in (0x00, 0x10), (
        f"With no subscriber on {topic} a broker answers the QoS 1 alarm with 0x00 Success or "
        f"0x10 No matching subscribers (MQTT 5 §3.4.2.1); it answered {reason(alone)}."
    )
    assert heard.value == 0x00, (
        f"With the controller subscribed to {topic} the PUBACK says 0x00 Success, not 0x10 No "
        f"matching subscribers: it said {reason(heard)}."
    )


@pytest.mark.broker
@pytest.mark.needs("qos1")
@pytest.mark.spec(mqtt5=["MQTT-3.4.2-1"])
def test_puback_0x87_makes_a_denied_publish_visible(lab_acl, mqtt_client):
    dashboard = mqtt_client("dashboard", broker=lab_acl, username="dashboard")
    dashboard.subscribe("factory/state/oven-01", qos=1)
    forged = {"forged": uuid.uuid4().hex}
    code = publish_for_ack(mqtt_client("press-01", broker=lab_acl), "factory/state/oven-01", forged)
    assert code.value == 0x87, (
        "The ACL lets press-01 write only its own topics. Lesson 06 showed MQTT 3.1.1 drops a "
        "denied publish silently; an MQTT 5 broker answers the QoS 1 publish with PUBACK 0x87 "
        f"Not authorized, so the press can log it. It answered {reason(code)}."
    )
    dashboard.assert_nothing_received(
        lambda m: m.payload == wire(forged), why="A publish answered 0x87 reaches nobody."
    )


@pytest.mark.broker
@pytest.mark.spec(mqtt5=["MQTT-3.8.4-5", "MQTT-3.8.4-6", "MQTT-3.8.4-7", "MQTT-3.9.3-1"])
def test_suback_answers_each_filter_of_one_subscribe_in_order(mqtt_client, topic_root):
    filters = [
        (f"{topic_root}/alarms/#", 2),  # alarms: as reliable as the broker allows
        (f"{topic_root}/telemetry/+/temperature", 0),  # readings: the next one replaces it
        (f"{topic_root}/state/+", 1),
    ]
    problem = mqtt5.suback_problem(filters, mqtt_client().subscribe_all(filters))
    assert problem is None, problem


@pytest.mark.broker
@pytest.mark.spec(mqtt5=["MQTT-3.1.4-3"])
def test_a_second_connection_with_the_same_client_id_takes_the_session_over(mqtt_client):
    client_id = unique("press-01")
    first = mqtt_client(client_id)
    second = mqtt_client(client_id)
    process.wait_until(lambda: not first.connected, timeout=PROMPT)
    assert second.connected, "The newer connection is the one that stays."
    sent = first.server_disconnects
    assert all(code.value == 0x8E for code in sent), (
        f"When a second client connects as {client_id}, the broker closes the first one's "
        "connection and, if it says why, says DISCONNECT 0x8E Session taken over "
        f"(MQTT-3.1.4-3). It sent {[reason(c) for c in sent]}."
    )


@pytest.mark.broker
@pytest.mark.parametrize(("code", "will_sent"), LEAVINGS)
@pytest.mark.spec(mqtt5=["MQTT-3.1.2-8", "MQTT-3.1.2-10", "MQTT-3.14.4-3"])
def test_disconnect_reason_code_decides_whether_the_will_is_sent(
    mqtt_client, topic_root, code, will_sent
):
    status = f"{topic_root}/status/press-01"
    watcher = mqtt5.subscribed(mqtt_client, status, qos=1)
    mqtt5.disconnect_with_reason(mqtt_client(will=(status, b"offline", 1, False)), code)
    if will_sent:
        why = "DISCONNECT 0x04 Disconnect with Will Message asks the broker to send the will"
        watcher.wait_for_message(status, timeout=PROMPT, why=f"{why} (MQTT 5 §3.14.2.1).")
    else:
        why = "DISCONNECT 0x00 Normal disconnection deletes the will (MQTT-3.14.4-3)"
        watcher.assert_nothing_received(status, why=f"{why}: nothing may arrive on {status}.")


# -- Message expiry --------------------------------------------------------------------------
@pytest.mark.broker
@pytest.mark.needs("qos1", "retain")
@pytest.mark.spec(mqtt5=["MQTT-3.3.2-5", "MQTT-3.3.2-6"])
def test_alarm_that_expired_while_the_controller_was_away_is_not_delivered(
    expiry_clocks, mqtt_client
):
    # expiry_clocks queued alarms expiring in 1 s and 60 s for the absent controller.
    alarms = expiry_clocks.controller_back(mqtt_client)
    got = [validate("alarm", m.payload)["value"] for m in alarms]
    assert got == [240.0], (
        f"Of the alarms queued on {expiry_clocks.alarms}, with message expiry intervals of 1 s "
        "and 60 s, the first had expired when the controller came back: the broker must delete "
        f"it (MQTT-3.3.2-5) and deliver only the second (240.0). It delivered values {got}."
    )
    remaining = alarms[0].properties.get("MessageExpiryInterval")
    assert remaining is not None and 0 < remaining < 60, (
        "A message delivered after waiting in the broker carries the interval it has left, "
        f"less than 60 s (MQTT-3.3.2-6). It carried MessageExpiryInterval={remaining!r}."
    )


@pytest.mark.broker
@pytest.mark.needs("qos1", "retain")
@pytest.mark.spec(mqtt5=["MQTT-3.3.2-5"])
def test_retained_state_with_an_expiry_disappears_when_it_expires(expiry_clocks, mqtt_client):
    # expiry_clocks published the retained state with a 1 s expiry; a new subscriber got it.
    remaining = expiry_clocks.early_state.properties.get("MessageExpiryInterval", 99)
    assert remaining <= 1, "A retained message carries what is left of its expiry (MQTT-3.3.2-6)."
    mqtt5.wait_until_expired(mqtt_client, expiry_clocks.state)


# -- Properties that say what a payload is, and request / response ---------------------------
@pytest.mark.broker
@pytest.mark.spec(mqtt5=["MQTT-3.3.2-17", "MQTT-3.3.2-18", "MQTT-3.3.2-20", "MQTT-3.3.2-4"])
def test_user_properties_and_content_type_reach_every_subscriber_unaltered(mqtt_client, topic_root):
    topic = f"{topic_root}/telemetry/press-01/temperature"
    labels = [("schema", "vf.telemetry/1"), ("site", "hall-a"), ("schema", "vf.legacy/0")]
    dashboards = [mqtt5.subscribed(mqtt_client, topic) for _ in range(2)]
    sent = props(UserProperty=labels, ContentType="application/json", PayloadFormatIndicator=1)
    mqtt_client().publish(topic, {"value": 181.5}, properties=sent)
    for dashboard in dashboards:
        got = mqtt5.payload_labels(dashboard.wait_for_message(topic))
        assert got == (labels, "application/json", 1), (
            "The broker forwards every user property in order, repeated keys included "
            "(MQTT-3.3.2-17, -18), the content type (MQTT-3.3.2-20) and the payload format "
            f"indicator (MQTT-3.3.2-4) unaltered: sent {labels}, application/json, 1; got {got}."
        )


@pytest.mark.broker
@pytest.mark.needs("qos1")
@pytest.mark.spec(mqtt5=["MQTT-3.3.2-4"])
def test_payload_marked_utf8_that_is_not_is_refused_or_forwarded_with_its_mark(
    mqtt_client, topic_root
):
    topic = f"{topic_root}/telemetry/press-01/temperature"
    dashboard = mqtt5.subscribed(mqtt_client, topic, qos=1)
    press = mqtt_client()
    broken = b'{"value": 181.5, "unit": "\xff\xfe"}'  # marked UTF-8, which it is not
    code = publish_for_ack(press, topic, broken, properties=props(PayloadFormatIndicator=1))
    problem = mqtt5.marked_utf8_problem(press, code, dashboard, topic)  # refused, or marked
    assert problem is None, problem


@pytest.mark.broker
@pytest.mark.spec(mqtt5=["MQTT-3.3.2-15", "MQTT-3.3.2-16"])
def test_response_topic_and_correlation_data_reach_the_responder_unaltered(mqtt_client, topic_root):
    request_topic = f"{topic_root}/commands/controller/press-01"
    press = mqtt5.subscribed(mqtt_client, request_topic, qos=1)
    response_topic = f"{topic_root}/replies/press-01/controller"
    label = uuid.uuid4().bytes + b"\x00\xff"  # binary: correlation data is any bytes
    request = validate("setpoints_request", {"request": "setpoints"})
    asked = props(ResponseTopic=response_topic, CorrelationData=label)
    mqtt_client().publish(request_topic, request, qos=1, properties=asked)
    got = press.wait_for_message(request_topic).properties
    received = (got.get("ResponseTopic"), bytes.fromhex(got.get("CorrelationData", "")))
    assert received == (response_topic, label), (
        "The broker forwards the response topic (MQTT-3.3.2-15) and the correlation data, any "
        f"bytes (MQTT-3.3.2-16), unaltered: sent {response_topic} and {label.hex()}, the "
        f"responder received {got.get('ResponseTopic')} and {got.get('CorrelationData')!r}."
    )


# -- Shared subscriptions --------------------------------------------------------------------
@pytest.mark.broker
@pytest.mark.needs("mqtt5", "qos1", "shared_subscriptions")  # mqtt5 first: the finding
@pytest.mark.spec(mqtt5=["MQTT-4.8.2-1", "MQTT-4.8.2-2", "MQTT-4.8.2-3"])
def test_shared_subscription_gives_each_message_to_one_member_of_the_group(mqtt_client, topic_root):
    group = f"$share/datacenter/{topic_root}/#"
    workers = [mqtt5.subscribed(mqtt_client, group, qos=1) for _ in range(2)]
    sent = [f"record-{i}".encode() for i in range(20)]
    records = f"{topic_root}/tunis-01/line-a/s4_conching/conche-01/batch"
    mqtt5.publish_until_delivered(mqtt_client, records, sent)  # a plain subscriber has them all
    got = [mqtt5.received_by_now(worker, f"{topic_root}/#") for worker in workers]
    problem = mqtt5.split_problem(group, sent, got)
    assert problem is None, problem
    assert all(m.qos == 1 for share in got for m in share), (
        "A shared subscription keeps the QoS it was granted (MQTT-4.8.2-3)."
    )


# -- Smaller tools, one experiment each ------------------------------------------------------
@pytest.mark.broker
@pytest.mark.spec(mqtt5=["MQTT-3.3.2-12"])
def test_topic_alias_lets_a_publisher_send_its_long_topic_once(mqtt_client, topic_root):
    topic = f"{topic_root}/telemetry/robot_arm-01/joint_3_temperature"
    dashboard = mqtt5.subscribed(mqtt_client, topic)
    arm = mqtt_client()
    if not arm.connack["properties"].get("TopicAliasMaximum", 0):
        pytest.skip("the broker announces no Topic Alias Maximum: it accepts no topic alias")
    arm.publish(topic, b"61.0", properties=props(TopicAlias=1))  # topic and alias: the mapping
    arm.publish("", b"61.5", properties=props(TopicAlias=1))  # the alias alone: 2 bytes
    got = dashboard.wait_for_messages(2, topic, why="Both readings were published to the arm.")
    assert [m.payload for m in got] == [b"61.0", b"61.5"], (
        "A PUBLISH with an empty topic and topic alias 1 is published to the topic that alias "
        "was set to (MQTT 5 §3.3.2.3.4): subscribers get the full topic name both times."
    )


@pytest.mark.broker
@pytest.mark.spec(mqtt5=["MQTT-3.3.4-3", "MQTT-3.3.4-4", "MQTT-3.3.4-5"])
def test_subscription_identifier_says_which_subscription_delivered_a_message(
    mqtt_client, topic_root
):
    dashboard = mqtt_client()
    dashboard.subscribe(f"{topic_root}/alarms/#", qos=1, subscription_id=1)  # the alarm panel
    dashboard.subscribe(f"{topic_root}/+/press-01/#", qos=1, subscription_id=2)  # the press view
    publisher = mqtt_client()
    publisher.publish(f"{topic_root}/alarms/press-01/temperature", alarm(), qos=1)
    publisher.publish(f"{topic_root}/alarms/oven-01/temperature", alarm(), qos=1)
    ids = mqtt5.subscription_ids(mqtt5.received_by_now(dashboard, f"{topic_root}/#"))
    assert ids == {"press-01": {1, 2}, "oven-01": {1}}, (
        "Each delivered message carries the identifiers of the subscriptions it matched "
        "(MQTT-3.3.4-3): the press alarm matched the alarm panel (1) and the press view (2), "
        f"the oven alarm only the panel (1). The dashboard saw {ids}."
    )


@pytest.mark.broker
@pytest.mark.spec(mqtt5=["MQTT-3.8.3-3"])
def test_no_local_keeps_a_dashboard_from_hearing_its_own_commands(mqtt_client, topic_root):
    commands = f"{topic_root}/commands/+/conveyor-01"
    dashboard = mqtt5.subscribed(mqtt_client, commands, qos=1, no_local=True)
    dashboard.publish(f"{topic_root}/commands/dashboard/conveyor-01", {"command": "stop"}, qos=1)
    controller = mqtt_client()
    controller.publish(f"{topic_root}/commands/controller/conveyor-01", {"command": "start"}, qos=1)
    dashboard.wait_for_message(commands, why="The controller's command must arrive.")
    senders = [m.topic.split("/")[-2] for m in mqtt5.received_by_now(dashboard, commands)]
    assert senders == ["controller"], (
        "With no local set, the broker does not send a client what it published itself "
        f"(MQTT-3.8.3-3): the dashboard should hear only the controller; it heard {senders}."
    )


@pytest.mark.broker
@pytest.mark.needs("qos1")
@pytest.mark.spec(mqtt5=["MQTT-3.3.4-9", "MQTT-3.3.4-10"])
def test_receive_maximum_caps_the_unacknowledged_messages_sent_to_a_slow_consumer(
    mqtt_client, topic_root
):
    records = f"{topic_root}/tunis-01/line-a/s8_packaging/packer-03/batch"
    slow = mqtt5.acknowledging_by_hand(mqtt_client, connect_properties={"ReceiveMaximum": 1})
    slow.subscribe(records, qos=1)
    line = mqtt_client()
    for i in range(3):
        line.publish(records, f"record-{i}", qos=1)
    held = mqtt5.received_by_qos0_marker(slow, line, records)  # QoS 0: outside the quota
    assert len(held) == 1, (
        "With Receive Maximum 1 the broker may have one unacknowledged QoS 1 message in flight "
        "to the data center (MQTT-3.3.4-9), and holds back no QoS 0 (MQTT-3.3.4-10); before it "
        f"acknowledged anything it had {len(held)}."
    )
    slow.paho.ack(held[0].mid, 1)
    slow.wait_for_messages(2, records, why="Once acknowledged, the next record comes.")


@pytest.mark.broker
@pytest.mark.spec(mqtt5=["MQTT-3.1.2-24", "MQTT-3.1.2-25"])
def test_maximum_packet_size_keeps_a_small_device_from_getting_what_it_cannot_hold(
    mqtt_client, topic_root
):
    topic = f"{topic_root}/commands/dashboard/sensor-07"
    sensor = mqtt_client(connect_properties={"MaximumPacketSize": 256})
    sensor.subscribe(topic, qos=1)
    dashboard = mqtt_client()
    dashboard.publish(topic, {"command": "set", "setpoint": "profile", "value": "x" * 1000}, qos=1)
    dashboard.publish(topic, {"command": "start"}, qos=1)
    sensor.wait_for_message(topic, why="The small command fits in 256 bytes.")
    sizes = [len(m.payload) for m in mqtt5.received_by_now(sensor, topic)]
    assert sizes == [len(wire({"command": "start"}))], (
        "The sensor connected with Maximum Packet Size 256: the broker drops a bigger packet "
        f"(MQTT-3.1.2-24) and carries on (MQTT-3.1.2-25). It received payloads of {sizes} bytes."
    )
    assert sensor.connected, "A dropped oversized message does not end the connection."


# -- The solution's programs (``--solution``; by default the lab's ``sim``), on MQTT 5 -------
@pytest.mark.solution
def test_device_labels_every_publish_with_its_schema_and_content_type(
    device, mqtt_client, topic_root
):
    watcher = mqtt5.subscribed(mqtt_client, f"{topic_root}/#", qos=1)
    device("press", "press-01", anomaly=True)
    watcher.wait_for_messages(4, f"{topic_root}/telemetry/press-01/#", why="It publishes often.")
    seen = mqtt5.by_kind(topic_root, watcher.received(f"{topic_root}/#"))
    for kind in ("telemetry", "state", "status"):
        assert seen.get(kind), f"The press published nothing on {topic_root}/{kind}/..."
    for kind, label in SCHEMA_LABELS.items():
        for message in seen.get(kind, []):
            problem = mqtt5.label_problem(kind, message, label)
            assert problem is None, problem


@pytest.mark.solution
def test_device_answers_setpoint_requests_on_the_response_topic_with_their_correlation_data(
    mqtt5_devices, mqtt_client, topic_root
):
    devices = mqtt5_devices("press", "oven")
    asker = mqtt_client()
    response_topic = f"{topic_root}/replies/lab/{asker.client_id}"  # one topic for both answers
    asker.subscribe(response_topic, qos=1)
    states = mqtt5.retained_states(asker, topic_root, devices)
    labels = mqtt5.ask_setpoints(asker, topic_root, devices, response_topic)  # all at once
    why = (
        f"A device that gets {{'request': 'setpoints'}} on its command topic with a Response Topic "
        f"answers there ({response_topic}) at QoS 1 (schemas/setpoints_reply.schema.json)."
    )
    answers = asker.wait_for_messages(2, response_topic, timeout=5, why=why)
    for answer in answers:
        problem = mqtt5.answer_problem(answer, labels, states)
        assert problem is None, problem


@pytest.mark.solution
def test_controller_commands_expire_so_a_late_conveyor_does_not_obey_them(
    mqtt5_controller, mqtt_client, topic_root
):
    commands_topic = f"{topic_root}/commands/+/conveyor-01"
    conveyor = mqtt5.subscribed(mqtt_client, commands_topic, qos=1)
    mqtt5_controller(rules=RULE)
    mqtt_client().publish(f"{topic_root}/alarms/press-01/temperature", alarm(), qos=1)
    why = f"An alarm on press-01's temperature calls for 'stop' on conveyor-01 (rule {RULE})."
    command = conveyor.wait_for_message(commands_topic, timeout=5, why=why)
    problem = mqtt5.command_expiry_problem(command)
    assert problem is None, problem


@pytest.mark.solution
@pytest.mark.needs("mqtt5", "qos1", "shared_subscriptions")  # mqtt5 first: the finding
def test_two_datacenter_workers_on_a_shared_subscription_store_each_record_once(
    shared_datacenter, mqtt_client, topic_root
):
    group = f"datacenter-{uuid.uuid4().hex[:6]}"
    workers = shared_datacenter(group)
    line = mqtt_client()
    first = mqtt5.publish_records(line, topic_root, 24)
    workers.wait(lambda: not workers.lost(first), 10, f"store the {len(first)} records")
    workers.settle(first)  # both have stored, or the verdict sees a worker that never will
    problem = workers.share_problem(group, first)
    assert problem is None, problem

    # SIGKILL, then end its session: what the broker chose for it waits for it (MQTT-4.8.2-5).
    dead = workers.kill_first(mqtt_client)
    second = mqtt5.publish_records(line, topic_root, 12)
    alone = f"store, alone, the {len(second)} records published after worker {dead} died"
    workers.wait(lambda: all(workers.rows()[1][i] >= 1 for i in second), 10, alone)
    lost, doubled = workers.lost(first + second), workers.twice(first + second)
    assert not lost and not doubled, (
        f"After worker {dead} died the other took over: each record stored exactly once; lost "
        f"{lost}, doubled {doubled}."
    )
