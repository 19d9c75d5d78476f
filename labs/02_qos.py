"""Lesson 02 — Quality of Service: how hard the network tries to deliver a message.

Every PUBLISH carries a **QoS level**, the sender's request for how much
effort the next hop spends on it (MQTT 3.1.1 §4.3, MQTT 5 §4.3):

* **QoS 0, at most once**: sent once, never acknowledged, never stored for an
  absent client. Cheap; a lost message is simply gone.
* **QoS 1, at least once**: the receiver answers PUBACK; until it does, the
  sender keeps the message and sends it again after a reconnection, with the
  **DUP flag** set. The receiver may see a message twice and must cope.
* **QoS 2, exactly once**: a four-step exchange — PUBLISH, PUBREC ("I have
  it"), PUBREL ("then release it"), PUBCOMP ("done"). After a reconnection the
  exchange resumes where it stopped: once the receiver has sent PUBREC, the
  sender resends PUBREL, never the message, so it is delivered once.

QoS is chosen **per hop**. The publisher's QoS governs publisher → broker; the
subscription's QoS is a ceiling for broker → subscriber. What a subscriber
receives comes at the **lower of the two**: a QoS 2 subscriber gets QoS 0
telemetry at QoS 0; a QoS 0 subscriber gets QoS 1 alarms at QoS 0, with none
of the guarantees. The broker answers each SUBSCRIBE with the QoS it
**granted** (SUBACK), which may legally be lower than asked for.

While a client with a **persistent session** is offline, the broker keeps its
subscriptions and queues the messages that match them — only those delivered
at QoS 1 or 2 (Mosquitto: ``queue_qos0_messages false``, the default). They
arrive, in order, when it returns. QoS 0 messages for it are dropped.

The virtual factory chooses per kind of message (the seed's "MQTT Behavior
Highlights"):

* telemetry at **QoS 0**: ten readings a second; the next one replaces a lost
  one, and acknowledging each would double the traffic;
* alarms, state and status at **QoS 1**: each must arrive; a duplicate is
  harmless (an alarm raised twice is still one alarm, a state is idempotent);
* commands at **QoS 1**, from the controller and the dashboard;
* the controller subscribes to alarms at **QoS 1** with a persistent session,
  so the alarms raised while it is restarting wait for it.

Pitfalls:

* Telemetry at QoS 1: every reading is stored and acknowledged, and queued
  for every offline persistent subscriber — thousands of stale readings
  delivered at once when a dashboard comes back.
* Subscribing at QoS 0 to QoS 1 data: the publisher paid for reliability and
  the subscriber threw it away. A controller that subscribes to alarms at
  QoS 0 loses every alarm raised while it is away, persistent session or not.
* Expecting QoS 1 to deliver once: it delivers *at least* once; handle DUP.

Try it (the seed's exercise 2), each command in its own terminal::

    python -m sim.run_all --anomaly --no-observer
    python -m sim.observer --qos 2
    # each line starts with the QoS it came at: [q0 -] telemetry, [q1 R] state...
    python -m sim.controller --session persistent --client-id controller-2
    # stop this second controller (Ctrl-C) for a while, then start it again with the
    # same command: it acts at once on the QoS 1 alarms raised meanwhile (its
    # "decision" lines); the QoS 0 telemetry of that time is gone for good.

Your programs in this lesson: ``[roles.device]`` (started with the
``anomaly`` option, so that it raises alarms within a few seconds) and
``[roles.controller]`` (with ``{session}`` = ``clean`` or ``persistent`` — the
lab stops a persistent controller with SIGTERM and starts it again with the
same ``{client_id}`` — and the ``rules`` option ``press/temperature=conveyor``:
stop the conveyor while the press's temperature alarm is raised, start it when
it clears). The lab watches their
messages with QoS 2 subscriptions, so each arrives at the QoS it was published
with.

Run it: ``pytest labs/02_qos.py -v`` (``-m broker`` or ``-m solution``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from mqtt_factory_lab.brokers import LOG
from mqtt_factory_lab.brokers.mosquitto_log import subscriptions
from mqtt_factory_lab.contract import validate
from mqtt_factory_lab.core.client import MQTTTimeout, RecordingClient
from mqtt_factory_lab.experiment import unique
from mqtt_factory_lab.experiment.qos import (
    ControllerRun,
    PacketLog,
    PressRun,
    away_while_the_press_publishes,
    by_qos,
    granted_qos,
    record_controller_away,
    record_press,
    telemetry,
    unacknowledged_alarm_sent_again,
)

pytestmark = [pytest.mark.lesson(2)]

QOS_LEVELS = [0, 1, 2]
#: the controller rule the solution experiments give (the seed's default)
RULE = "press/temperature=conveyor"
SESSION_EXPIRY = 60


# The payloads, watchers and paho's packet log live in mqtt_factory_lab.experiment.qos.


@pytest.fixture
def session_client(broker, mqtt_client) -> Iterator[Callable[..., RecordingClient]]:
    """``session_client(client_id, protocol, manual_ack=False, connect=True)``: a client with a
    persistent session (MQTT 5: clean start off, expiry 60 s; 3.1.1: clean session off).

    Every session it made is removed at the end (a clean connection with the same id), so the
    shared broker does not keep queueing for it.
    """
    made: list[RecordingClient] = []

    def make(
        client_id: str, protocol: str, *, manual_ack: bool = False, connect: bool = True
    ) -> RecordingClient:
        client = mqtt_client(
            client_id,
            protocol=protocol,
            clean_start=False,
            session_expiry=SESSION_EXPIRY,
            connect=False,
        )
        made.append(client)
        # paho 2.x: with manual acknowledgement, on_message runs but no PUBACK (QoS 1) or
        # PUBCOMP (QoS 2) is sent until client.ack(mid, qos) is called.
        client.paho.manual_ack_set(manual_ack)
        if connect:
            client.connect()
        return client

    yield make
    for client in made:  # first leave, so that the clean connection below takes over nothing
        client.disconnect()
    for client_id, protocol in {(c.client_id, c.protocol) for c in made}:
        mqtt_client(client_id, protocol=protocol, clean_start=True).disconnect()


# -- the broker's rules ---------------------------------------------------------------------


@pytest.mark.broker
@pytest.mark.parametrize("sub_qos", QOS_LEVELS, ids=lambda q: f"sub{q}")
@pytest.mark.parametrize("pub_qos", QOS_LEVELS, ids=lambda q: f"pub{q}")
@pytest.mark.spec(mqtt311=["MQTT-3.8.4-6"], mqtt5=["MQTT-3.8.4-8"])
def test_delivered_qos_is_the_lower_of_publish_and_granted_qos(
    mqtt_client, topic_root, protocol, pub_qos, sub_qos
):
    topic = f"{topic_root}/telemetry/press/temperature"
    subscriber = mqtt_client(protocol=protocol)
    granted = granted_qos(subscriber.subscribe(topic, qos=sub_qos))
    assert granted <= sub_qos, (
        f"A broker may grant a lower QoS than a SUBSCRIBE asks for, never a higher one: asked "
        f"{sub_qos}, granted {granted}."
    )

    mqtt_client(protocol=protocol).publish(topic, telemetry("press", 1), qos=pub_qos)
    message = subscriber.wait_for_message(
        topic, why="A subscriber gets every publish on a topic its filter matches."
    )

    expected = min(pub_qos, granted)
    assert message.qos == expected, (
        f"QoS is per hop: the broker forwards a message at the lower of the publisher's QoS "
        f"({pub_qos}) and the QoS it granted the subscription ({granted}), so QoS {expected} "
        f"on {topic}; it came at QoS {message.qos}."
    )
    validate("telemetry", message.payload)


@pytest.mark.broker
@pytest.mark.needs("qos1")
@pytest.mark.spec("MQTT-4.4.0-1")
def test_qos1_is_sent_again_when_the_puback_never_came(
    mqtt_client, session_client, topic_root, protocol
):
    unacknowledged_alarm_sent_again(mqtt_client, session_client, topic_root, protocol)


@pytest.mark.broker
@pytest.mark.needs("qos1")
@pytest.mark.spec("MQTT-3.3.1-1", mqtt311=["MQTT-4.3.2-1"], mqtt5=["MQTT-4.3.2-2"])
def test_a_redelivered_message_carries_dup_and_the_first_does_not(
    mqtt_client, session_client, topic_root, protocol
):
    try:
        first, second = unacknowledged_alarm_sent_again(
            mqtt_client, session_client, topic_root, protocol
        )
    except MQTTTimeout:
        # DUP is judged on a redelivery; without one the broker already failed MQTT-4.4.0-1
        # in test_qos1_is_sent_again_when_the_puback_never_came, and only there.
        pytest.skip("the broker sent nothing again, so there is no redelivery whose DUP to judge")
    assert not first.dup, "The first delivery of a message carries DUP=0 (MQTT §4.3.2)."
    assert second.dup, (
        "A message sent again because its PUBACK never came carries the DUP flag (MQTT "
        "§3.3.1.1, MQTT-3.3.1-1), so the receiver knows it may have seen it already; it "
        "came with DUP=0."
    )


@pytest.mark.broker
@pytest.mark.spec("MQTT-3.3.4-1", mqtt311=["MQTT-4.3.3-2"], mqtt5=["MQTT-4.3.3-8"])
def test_a_qos2_publish_is_answered_with_pubrec(mqtt_client, topic_root, protocol, behaviour):
    # No needs("qos2"): a broker without QoS 2 is judged too, by what it answers.
    topic = f"{topic_root}/commands/dashboard/press"
    publisher = mqtt_client(protocol=protocol, connect=False)
    packets = PacketLog(publisher)
    publisher.connect()
    advertised = publisher.connack["properties"].get("MaximumQoS")
    closed = None
    try:
        publisher.publish(topic, b"stop", qos=2, timeout=3)
    except ConnectionError as error:
        closed = str(error).split(": ", 1)[-1]
    if closed is not None and protocol == "5" and advertised is not None and advertised < 2:
        behaviour.observe(
            f"CONNACK Maximum QoS {advertised}, and a QoS 2 PUBLISH closed the connection "
            f"({closed})",
            as_taught=True,
            lesson="An MQTT 5 server without QoS 2 says so in CONNACK (Maximum QoS) and treats "
            "a QoS 2 PUBLISH as a protocol error (DISCONNECT 0x9B).",
        )
        return
    if closed is not None:
        where = (
            "MQTT 3.1.1 has no way to refuse a QoS"
            if protocol == "3.1.1"
            else "its CONNACK did not limit Maximum QoS, so it must take a QoS"
        )
        pytest.fail(
            f"The broker closed the connection at a QoS 2 PUBLISH on {topic} ({closed}): the "
            f"receiver of a PUBLISH answers as its QoS requires, PUBREC for QoS 2 "
            f"(MQTT-3.3.4-1); {where} 2 PUBLISH from a client it accepted.",
            pytrace=False,
        )
    answers = packets.find(r"Received (PUBACK|PUBREC|PUBCOMP) \(Mid: \d+\)")
    first = answers[0].group(1) if answers else "nothing paho logged"
    assert first == "PUBREC", (
        f"QoS 2 is PUBLISH → PUBREC → PUBREL → PUBCOMP: the broker must answer a QoS 2 PUBLISH "
        f"with PUBREC (MQTT-3.3.4-1, §4.3.3); it answered with {first}. Paho's packet log: "
        f"{packets.lines[-6:]}"
    )


@pytest.mark.broker
@pytest.mark.needs("qos2")
@pytest.mark.spec("MQTT-4.4.0-1")
def test_qos2_resumes_at_pubrel_and_delivers_exactly_once(
    mqtt_client, session_client, topic_root, protocol
):
    topic = f"{topic_root}/commands/dashboard/press"
    client_id = unique("qos2-once")
    subscriber = session_client(client_id, protocol, manual_ack=True, connect=False)
    packets = PacketLog(subscriber)
    subscriber.connect()
    subscriber.subscribe(topic, qos=2)

    command = validate("command", {"command": "stop", "reason": "lesson 02: exactly once"})
    mqtt_client(protocol=protocol).publish(topic, command, qos=2)
    subscriber.wait_for_message(topic, why="The command reaches its QoS 2 subscriber.")
    received = packets.find(r"Received PUBLISH \(d\d, q2, r\d, m(\d+)\)")
    mid = received[0].group(1)
    assert packets.find(rf"Sending PUBREC \(Mid: {mid}\)") and packets.find(
        rf"Received PUBREL \(Mid: {mid}\)"
    ), f"QoS 2 runs PUBLISH → PUBREC → PUBREL; paho's packet log: {packets.lines}"
    # Paho hands a QoS 2 message over at PUBREL; with manual ack it holds back the PUBCOMP.
    subscriber.disconnect()

    again = session_client(client_id, protocol, connect=False)
    packets_again = PacketLog(again)
    again.connect()
    again.sync()

    assert packets_again.find(rf"Received PUBREL \(Mid: {mid}\)"), (
        f"After a reconnection a QoS 2 exchange resumes where it stopped: the subscriber had "
        f"sent PUBREC for message {mid}, so the broker must send PUBREL again (MQTT §4.4) to "
        f"get its PUBCOMP. Paho's packet log: {packets_again.lines}"
    )
    assert not again.received(topic), (
        f"QoS 2 is exactly-once: the subscriber had already received the command on {topic} "
        f"(it answered PUBREC), so the broker must not send the PUBLISH again; it did: "
        f"{[m.describe() for m in again.received(topic)]}"
    )


@pytest.mark.broker
@pytest.mark.needs("qos1")
@pytest.mark.spec(mqtt311=["MQTT-3.1.2-5", "MQTT-4.6.0-6"], mqtt5=["MQTT-3.1.2-23", "MQTT-4.6.0-5"])
def test_offline_persistent_subscriber_gets_qos1_queued_in_order(
    mqtt_client, session_client, topic_root, protocol
):
    back, values = away_while_the_press_publishes(mqtt_client, session_client, topic_root, protocol)
    queued = back.wait_for_messages(
        len(values),
        f"{topic_root}/alarms/#",
        queued=True,
        why="While a persistent-session subscriber is offline, the broker queues the QoS 1 "
        "messages that match its subscriptions and delivers them when it returns.",
    )
    got = [validate("alarm", m.payload)["value"] for m in queued]
    assert got == values, (
        f"Queued messages are delivered in the order they were published (MQTT §4.6): "
        f"expected alarm values {values}, got {got}."
    )


@pytest.mark.broker
@pytest.mark.needs("qos1")
@pytest.mark.rule("may", mqtt311="§3.1.2.4", mqtt5="§4.1")
def test_whether_qos0_is_queued_for_an_offline_session_is_the_brokers_choice(
    mqtt_client, session_client, topic_root, protocol, behaviour
):
    back, _values = away_while_the_press_publishes(
        mqtt_client, session_client, topic_root, protocol
    )
    back.sync()
    kept = back.received(f"{topic_root}/telemetry/#")
    behaviour.observe(
        f"it queued {len(kept)} of 4 QoS 0 readings published while the session was offline",
        as_taught=not kept,
        lesson="QoS 0 is at-most-once: a broker may keep it for an offline client (MQTT "
        "3.1.1 §3.1.2.4, MQTT 5 §4.1 allow it) or drop it; Mosquitto drops it unless "
        "`queue_qos0_messages true` is set, and the lab's broker keeps the default.",
    )


# -- The solution's programs ----------------------------------------------------------------
# The watcher subscribes at QoS 2, so each message reaches it at the QoS its publisher chose.


@pytest.fixture
def press_run(module_programs) -> PressRun:
    """The solution's press (anomalies on) as a QoS 2 watcher saw it from its start, recorded
    once per module and protocol (:func:`record_press`) for the experiments that judge it."""
    run = module_programs.once("press", lambda p: record_press(p.launcher, p.client))
    for problem in (run.watcher_problem, run.not_started):
        if problem:
            pytest.fail(problem, pytrace=False)
    return run


@pytest.mark.solution
def test_device_sends_telemetry_at_qos0(press_run):
    if press_run.no_readings:
        pytest.fail(press_run.no_readings, pytrace=False)
    readings = press_run.readings

    wrong = [m for m in readings if m.qos != 0]
    for m in readings:
        validate("telemetry", m.payload)
    if wrong:
        pytest.fail(
            f"Telemetry goes at QoS 0 (at most once): a reading lost is replaced by the next one a "
            f"moment later, while QoS 1 makes every reading wait for a PUBACK and be queued for "
            f"every offline persistent subscriber. Your device published (seen by a QoS 2 "
            f"subscriber, so at the publisher's own QoS):\n{by_qos(wrong, press_run.root)}\n"
            f"Publish telemetry with qos=0.",
            pytrace=False,
        )


@pytest.mark.solution
def test_device_sends_alarms_state_and_status_at_qos1(press_run):
    if press_run.missing:
        pytest.fail(press_run.missing[0], pytrace=False)

    wrong = [m for m in press_run.alarms_state_status() if m.qos != 1]
    if wrong:
        pytest.fail(
            "Alarms, state and status go at QoS 1 (at least once): each must arrive — a missed "
            "alarm is a machine nobody stops, a missed state a dashboard that lies — and a "
            "duplicate does no harm. Your device published (seen by a QoS 2 subscriber, so at the "
            f"publisher's own QoS):\n{by_qos(wrong, press_run.root)}\nPublish them with qos=1.",
            pytrace=False,
        )


def no_command(root: str, command: str) -> str:
    return (
        f"The controller (rule {RULE}) sent no {command} to the conveyor on "
        f"{root}/commands/<publisher>/conveyor within 5 s of the press's temperature alarm "
        f"on {root}/alarms/press/temperature: it must subscribe to the alarms and act on them."
    )


@pytest.fixture
def controller_run(module_programs) -> ControllerRun:
    """The solution's controller live, stopped and restarted (:func:`record_controller_away`),
    recorded once per module and protocol for the experiments that judge it."""

    def run(programs) -> ControllerRun:
        broker = programs.broker
        mark = broker.log_mark() if LOG in broker.capabilities else None
        return record_controller_away(programs.launcher, programs.client, RULE, log_mark=mark)

    recorded = module_programs.once("controller", run)
    for problem in (recorded.watcher_problem, recorded.not_started):
        if problem:
            pytest.fail(problem, pytrace=False)
    if recorded.first_command is None:
        pytest.fail(no_command(recorded.root, "stop"), pytrace=False)
    return recorded


@pytest.mark.solution
def test_controller_sends_commands_at_qos1(controller_run):
    command = controller_run.first_command
    validate("command", command.payload)
    if command.qos != 1:
        pytest.fail(
            f"Commands go at QoS 1 (at least once): a stop that is lost leaves a machine running "
            f"into trouble. The controller published {command.topic} at QoS {command.qos} (seen by "
            f"a QoS 2 subscriber, so at the publisher's own QoS); publish commands with qos=1.",
            pytrace=False,
        )


@pytest.mark.solution
def test_controller_gets_the_alarms_raised_while_it_was_away(broker, controller_run):
    if controller_run.acted_after_restart:
        return
    root, controller_id = controller_run.root, controller_run.controller_id
    evidence = ""
    if controller_run.log_mark is not None:
        logged = subscriptions(broker.log_lines()[controller_run.log_mark :], controller_id)
        shown = ", ".join(dict.fromkeys(f"{f} at QoS {q}" for f, q in logged)) or "none"
        evidence = f"\nThe broker logged its subscriptions: {shown}."
    pytest.fail(
        f"The alarm on {root}/alarms/press/temperature cleared (QoS 1) while the controller was "
        f"stopped, and it never acted on it after its restart (no start for the conveyor within "
        f"3 s). A broker queues a message for an offline client only when it delivers it at "
        f"QoS 1 or 2 — the lower of publish and subscription QoS, so a QoS 0 subscription has "
        f"nothing queued (Mosquitto's default) — and only in a persistent session. Subscribe "
        f"to alarms at QoS 1, with clean start off and the client id the manifest gives "
        f"({{client_id}}) at every start.{evidence}",
        pytrace=False,
    )
