"""Lesson 05 — Sessions: what the broker remembers about a client between two connections.

A connection is a TCP socket; a **session** is what the broker keeps about a client
*id*: its subscriptions and the QoS 1/2 messages it has not yet received or
acknowledged. A session can outlive its connection. That is what lets the factory's
controller be restarted — a deployment, a crash, a laptop lid — without missing the
alarm that fired meanwhile.

* **Clean versus persistent.** MQTT 3.1.1 has one bit, *clean session*: 1 = start
  afresh and forget everything at disconnect; 0 = resume the previous session and keep
  it after disconnect (§3.1.2.4). MQTT 5 splits it in two (§3.1.2.4, §3.1.2.11.2):
  *clean start* (discard any existing session now) and the **session expiry
  interval** (how many seconds the broker keeps the session after the connection ends;
  0, the default, = end it at disconnect).
* While a persistent session's client is away, the broker **queues** QoS 1 and 2
  messages that match its subscriptions and delivers them, **in order**, when it
  returns — without a new SUBSCRIBE, since the subscriptions are part of the session.
  QoS 0 messages are not queued (lesson 02).
* The **session present** flag of CONNACK tells the client whether the broker
  resumed a session (3.1.1 §3.2.2.2, MQTT 5 §3.2.2.1.1). A client that finds it 0 has
  lost its subscriptions and must subscribe again.
* A session belongs to a **client id**. Reconnect with another id and you get another,
  empty session; the old one waits, full of messages nobody will read, until it
  expires.
* A session lives in the broker's memory. It survives a broker restart only when the
  broker persists it (Mosquitto: ``persistence true``; queued messages included).

In the virtual factory the controller subscribes to ``<root>/alarms/#`` at QoS 1. Started
with ``--session persistent`` it keeps one client id, connects with clean start off
(MQTT 5: session expiry of an hour) and so acts, when it returns, on every alarm raised
while it was away, in the order they were raised. With ``--session clean`` those alarms
are gone: right for a dashboard that only shows the present, wrong for a controller.

Pitfalls:

* A random client id at every start (paho's default when you pass none): every restart
  creates a new session, and the alarms wait in the old one.
* paho's defaults are clean: an MQTT 3.1.1 client has ``clean_session=True``; an MQTT 5
  ``connect()`` has ``clean_start=MQTT_CLEAN_START_FIRST_ONLY`` (clean at every program
  start, resumed only on paho's own reconnects) and no session expiry (the session ends
  at disconnect). A persistent MQTT 5 client passes ``clean_start=False`` *and* a
  ``SessionExpiryInterval`` property.
* Subscribing at QoS 0: nothing is queued for a QoS 0 subscription.
* Sessions of clients that never return, piling up queued messages in the broker: give
  MQTT 5 sessions an expiry.
* Subscribing once, after ``connect()``, instead of in ``on_connect``. paho reconnects
  by itself after a dropped connection, but a clean session (or one the broker lost: a
  restart without persistence, a takeover) comes back with **no subscriptions**: the
  device looks online and never hears another command. Subscribe in ``on_connect``, which
  runs after every connection (or check CONNACK's session present flag).

Try it (the seed's exercise 5, with the lab's reference programs)::

    python -m sim.cli sub --topic 'factory/commands/#' --qos 1 --verbose
    python -m sim.controller --session persistent --client-id controller
    python -m sim.device --device press --anomaly

Stop the controller (Ctrl-C) while an alarm is raised, start it again with the same
command, and watch its queued alarm turn into a command at once. Then do the same with
``--session clean``. Where the seed waits 30 seconds, the lesson publishes the alarms
itself, as the press would, while the controller is stopped.

Your programs in this lesson: the ``[roles.controller]`` role of your manifest, started
with ``{client_id}`` (always the same id for the same controller), ``{session}`` =
``clean`` or ``persistent`` and the option ``rules`` = ``press-01/temperature=conveyor-01``
(an alarm raised on press-01's temperature: send ``stop`` to conveyor-01; cleared: send
``start``); ``VF_MQTT_PROTOCOL`` says which MQTT version to speak. Commands go to
``<root>/commands/<publisher>/conveyor-01`` at QoS 1 (``schemas/command.schema.json``).
The lab stops the controller with SIGTERM and starts it again.

Run it: ``pytest labs/05_sessions.py -v``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from mqtt_factory_lab.brokers import CONFIG, LOG, RESTART, Broker
from mqtt_factory_lab.contract import validate
from mqtt_factory_lab.experiment import unique, wait_broker_saw_disconnect
from mqtt_factory_lab.experiment.ahead import (
    Ahead,
    ahead_scope,
    judged_by,
    launchers,
    own_broker,
    per_protocol,
    seconds_left,
    start_ahead,
)
from mqtt_factory_lab.experiment.sessions import (
    EXPIRY,
    PROMPT,
    DroppedDevice,
    ExpiredSession,
    alarm,
    command_names,
    controller_connection,
    drop_session,
    leave_with_expiry,
    session,
    which_cause,
)
from mqtt_factory_lab.fixtures.factory import start_controller

pytestmark = [pytest.mark.lesson(5)]

SESSIONS = [
    # a clean session is discarded (CleanSession=1 / Clean Start=1)
    pytest.param(
        False, id="clean", marks=pytest.mark.spec(mqtt311=["MQTT-3.1.2-6"], mqtt5=["MQTT-3.1.2-4"])
    ),
    # a persistent one is kept with its QoS 1 queue and resumed
    pytest.param(
        True,
        id="persistent",
        marks=pytest.mark.spec(
            mqtt311=["MQTT-3.1.2-4", "MQTT-3.1.2-5"], mqtt5=["MQTT-3.1.2-5", "MQTT-3.1.2-23"]
        ),
    ),
]


# -- Runs that wait on the broker's clock -------------------------------------------------
# A session expiry and a device's reconnect delay cannot be hurried: these runs start at the
# module's first experiment (experiment.ahead, .sessions); the last experiments judge them.


@pytest.fixture(scope=ahead_scope)
def runs_broker(broker_pool) -> Iterator[Ahead[Broker]]:
    """The runs' own broker: the controller experiments read the shared broker's log to tell
    whose connection is whose, and the runs' connections must not mix into it."""
    with Ahead(lambda stack: own_broker(stack, broker_pool)) as run:
        yield run


@pytest.fixture(scope=ahead_scope)
def expired_session(runs_broker) -> Iterator[Ahead[ExpiredSession]]:
    """An MQTT 5 controller that subscribed with a session expiry of 1 s and left."""
    with Ahead(lambda stack: leave_with_expiry(stack, runs_broker.result(), expiry=1)) as run:
        yield run


@pytest.fixture(scope=ahead_scope)
def dropped_presses(
    request, runs_broker, solution, pytestconfig
) -> Iterator[dict[str, Ahead[DroppedDevice]]]:
    """The solution's press per MQTT version: it obeyed, then lost its connection and session."""

    def drop(stack, protocol: str) -> DroppedDevice:
        broker = runs_broker.result()
        launcher = launchers(pytestconfig, solution, broker, [protocol])[protocol]
        return drop_session(stack, launcher, protocol)

    with contextlib.ExitStack() as stack:
        yield {p: stack.enter_context(run) for p, run in per_protocol(request, drop).items()}


judged_by("expired_session", "dropped_presses")


@pytest.fixture(scope="module", autouse=True)
def _runs_started_ahead(request) -> None:
    start_ahead(request, "expired_session", "dropped_presses")


# -- The broker's side -----------------------------------------------------------------


@pytest.mark.broker
@pytest.mark.parametrize("persistent", SESSIONS)
@pytest.mark.needs("qos1")
def test_only_a_persistent_session_keeps_subscriptions_and_queued_alarms(
    broker, mqtt_client, topic_root, protocol, persistent
):
    topic = f"{topic_root}/alarms/press-01/temperature"
    controller_id = unique("controller")
    controller = mqtt_client(controller_id, **session(protocol, persistent))
    controller.subscribe(topic, qos=1)
    mark = broker.log_mark()
    controller.disconnect()
    wait_broker_saw_disconnect(broker, controller_id, mark)

    press = mqtt_client(protocol=protocol)
    sent = [alarm("raised", 231.0), alarm("cleared", 205.0), alarm("raised", 232.5)]
    for payload in sent:
        press.publish(topic, payload, qos=1)

    back = mqtt_client(controller_id, **session(protocol, persistent))  # and no SUBSCRIBE
    kind = "persistent" if persistent else "clean"
    if persistent:
        assert back.connack["session_present"], (
            f"The controller reconnected as {controller_id} with a persistent session: the "
            f"broker must resume it and say so with session present = 1 in CONNACK."
        )
        got = back.wait_for_messages(
            3,
            topic,
            timeout=PROMPT,
            queued=True,
            why=f"While a client with a persistent session is away, the broker queues the QoS 1 "
            f"messages matching its subscriptions and delivers them when it returns, without a "
            f"new SUBSCRIBE (MQTT §4.1). Three alarms were published on {topic}.",
        )
        received = [validate("alarm", m.payload) for m in got]
        assert received == sent, (
            "Queued messages must arrive in the order they were published (MQTT §4.6): the "
            f"alarms went out as {[a['state'] for a in sent]} and came back as "
            f"{[a['state'] for a in received]}."
        )
        assert all(m.qos == 1 for m in got), "Queued QoS 1 messages are delivered at QoS 1."
    else:
        assert not back.connack["session_present"], (
            "A clean session starts empty: CONNACK must say session present = 0."
        )
        back.assert_nothing_received(
            topic,
            why=f"With a {kind} session the broker forgets the client at disconnect: the alarms "
            f"published while it was away must not be delivered.",
        )
        press.publish(topic, alarm("cleared", 204.0), qos=1)
        back.assert_nothing_received(
            topic,
            why=f"A {kind} session also forgets subscriptions: until the controller subscribes "
            f"again, new alarms on {topic} must not reach it either.",
        )


@pytest.mark.broker
@pytest.mark.spec(mqtt311=["MQTT-3.2.2-1", "MQTT-3.2.2-2"], mqtt5=["MQTT-3.2.2-2", "MQTT-3.2.2-3"])
def test_connack_session_present_says_whether_the_broker_resumed_a_session(mqtt_client, protocol):
    client_id = unique("controller")

    first = mqtt_client(client_id, **session(protocol, persistent=True))
    first.disconnect()
    again = mqtt_client(client_id, **session(protocol, persistent=True))
    again.disconnect()
    fresh = mqtt_client(client_id, **session(protocol, persistent=False))

    flags = [c.connack["session_present"] for c in (first, again, fresh)]
    assert flags == [False, True, False], (
        "CONNACK's session present flag is 0 when there was no session to resume (first "
        "connection), 1 when the broker resumed one (second connection, clean start off) and 0 "
        f"when the client asked for a clean start (third). The broker sent {flags}."
    )


@pytest.mark.broker
@pytest.mark.parametrize(
    ("expiry", "kept"),
    [pytest.param(0, False, id="expiry-0"), pytest.param(EXPIRY, True, id=f"expiry-{EXPIRY}")],
)
@pytest.mark.needs("mqtt5")
@pytest.mark.spec(mqtt5=["MQTT-3.1.2-23"])
def test_session_expiry_interval_decides_whether_the_session_outlives_the_connection(
    broker, mqtt_client, topic_root, expiry, kept
):
    topic = f"{topic_root}/alarms/oven-01/temperature"
    client_id = unique("controller")
    controller = mqtt_client(client_id, clean_start=False, session_expiry=expiry)
    controller.subscribe(topic, qos=1)
    mark = broker.log_mark()
    controller.disconnect()
    wait_broker_saw_disconnect(broker, client_id, mark)
    sent = alarm("raised", 231.0, "oven-01")
    mqtt_client().publish(topic, sent, qos=1)

    back = mqtt_client(client_id, clean_start=False, session_expiry=expiry)

    if kept:
        assert back.connack["session_present"], (
            f"With session expiry interval {expiry} s the broker keeps the session after the "
            f"connection ends (MQTT 5 §3.1.2.11.2): the reconnect must find it (session present)."
        )
        message = back.wait_for_message(
            topic, why="The alarm published while the client was away was queued in its session."
        )
        assert validate("alarm", message.payload) == sent
    else:
        assert not back.connack["session_present"], (
            "An MQTT 5 session expiry interval of 0 (the default) ends the session when the "
            "connection closes, even with clean start off: nothing can be resumed."
        )
        back.assert_nothing_received(
            topic, why="With session expiry 0 nothing was kept, so nothing was queued."
        )


@pytest.mark.broker_needs(RESTART, CONFIG)
@pytest.mark.parametrize(
    ("variant", "survives"),
    [
        pytest.param("persistent", True, id="persistence-on"),
        pytest.param("open", False, id="persistence-off"),
    ],
)
@pytest.mark.rule("may")  # persistence is the implementation's to offer; Mosquitto's is taught
def test_persistent_session_survives_a_broker_restart_only_with_persistence(
    make_broker, mqtt_client, topic_root, protocol, variant, survives
):
    broker = make_broker(variant)
    topic = f"{topic_root}/alarms/press-01/temperature"
    client_id = unique("controller")
    controller = mqtt_client(client_id, broker=broker, **session(protocol, persistent=True))
    controller.subscribe(topic, qos=1)
    mark = broker.log_mark()
    controller.disconnect()
    wait_broker_saw_disconnect(broker, client_id, mark)
    sent = [alarm("raised", 231.0), alarm("cleared", 205.0)]
    press = mqtt_client(protocol=protocol, broker=broker)
    for payload in sent:
        press.publish(topic, payload, qos=1)
    press.disconnect()

    broker.restart()

    back = mqtt_client(client_id, broker=broker, **session(protocol, persistent=True))
    if survives:
        assert back.connack["session_present"], (
            "With `persistence true` Mosquitto saves sessions to its database when it stops and "
            "reloads them at start: the persistent session must still be there after the restart."
        )
        got = back.wait_for_messages(
            2, topic, why="The alarms queued before the restart were saved with the session."
        )
        assert [validate("alarm", m.payload) for m in got] == sent, (
            "The queued alarms must come back in the order they were published."
        )
    else:
        assert not back.connack["session_present"], (
            "Without persistence, sessions live only in the broker's memory: after a restart no "
            "session can be resumed, persistent or not."
        )
        back.assert_nothing_received(
            topic, why="The alarms queued before the restart were lost with the broker's memory."
        )


# -- The factory's own controller -------------------------------------------------------
# The experiments below start the controller of the solution under test (``--solution``;
# by default the lab's own ``sim.controller``), stop it, publish alarms as the press
# would, start it again and watch the commands it sends.

RULE = "press-01/temperature=conveyor-01"


@pytest.mark.solution
def test_persistent_controller_acts_on_alarms_raised_while_it_was_stopped(
    factory_launcher, broker, mqtt_client, topic_root, protocol
):
    launcher = factory_launcher(protocol=protocol)
    commands_topic = f"{topic_root}/commands/+/conveyor-01"
    commands = mqtt_client()
    commands.subscribe(commands_topic, qos=1)
    press = mqtt_client(protocol=protocol)
    ours = {commands.client_id, press.client_id}
    client_id = unique("controller")

    mark = mark_first = broker.log_mark()
    controller = start_controller(launcher, client_id, RULE, "persistent")
    before = controller_connection(broker, mark, ours)
    controller.stop()

    alarm_topic = f"{topic_root}/alarms/press-01/temperature"
    sent = [alarm("raised", 231.0), alarm("cleared", 205.0), alarm("raised", 232.5)]
    for payload in sent:
        press.publish(alarm_topic, payload, qos=1)

    mark = broker.log_mark()
    start_controller(launcher, client_id, RULE, "persistent")
    after = controller_connection(broker, mark, ours)

    if before and after:  # what the broker logged: the ids and clean flags it was sent
        assert after.client_id == before.client_id, (
            f"The controller connected as {before.client_id!r}, was stopped, and came back as "
            f"{after.client_id!r}. A session belongs to a client id: with a new id the broker "
            f"opens a new, empty session, and the alarms queued for the old one are never "
            f"delivered. Connect with the client id the lab gives ({client_id}) every time."
        )
        assert not after.clean, (
            f"The controller was asked for a persistent session but reconnected with "
            f"{'clean session' if protocol == '3.1.1' else 'clean start'} = 1, which tells the "
            f"broker to throw its session away, queued alarms included. Connect with "
            + (
                "clean_session=False"
                if protocol == "3.1.1"
                else "clean_start=False and a session expiry interval > 0"
            )
            + " when session = persistent."
        )
    got = commands.wait_for_messages(
        3,
        commands_topic,
        timeout=5,
        why=f"A controller with a persistent session that is stopped while alarms are raised "
        f"gets them, queued by the broker, when it comes back, and acts on them. Three alarms "
        f"(raised, cleared, raised) were published on {alarm_topic} while it was stopped; "
        f"under rule {RULE} they call for stop, start, stop on conveyor-01. "
        + which_cause(broker, mark_first, client_id, protocol, before),
    )
    assert all(m.qos == 1 for m in got), "Commands are sent at QoS 1."
    assert command_names(got) == ["stop", "start", "stop"], (
        f"The queued alarms arrive in the order they were raised, so the controller's commands "
        f"must follow that order: stop, start, stop. It sent {command_names(got)}: conveyor-01 "
        f"would end in the wrong state."
    )


@pytest.mark.solution
def test_clean_session_controller_does_not_get_alarms_raised_while_it_was_stopped(
    factory_launcher, mqtt_client, topic_root, protocol
):
    launcher = factory_launcher(protocol=protocol)
    commands_topic = f"{topic_root}/commands/+/conveyor-01"
    commands = mqtt_client()
    commands.subscribe(commands_topic, qos=1)
    press = mqtt_client(protocol=protocol)
    alarm_topic = f"{topic_root}/alarms/press-01/temperature"
    client_id = unique("controller")

    start_controller(launcher, client_id, RULE, "clean").stop()
    press.publish(alarm_topic, alarm("raised", 231.0), qos=1)  # nobody listens
    start_controller(launcher, client_id, RULE, "clean")
    press.publish(alarm_topic, alarm("cleared", 205.0), qos=1)  # live, after the restart

    commands.wait_for_message(
        lambda m: validate("command", m.payload)["command"] == "start",
        timeout=5,
        why=f"The restarted controller must act on live alarms: 'cleared' on {alarm_topic} "
        f"calls for start on conveyor-01 (rule {RULE}).",
    )
    sent = command_names(commands.received(commands_topic))
    assert sent == ["start"], (
        f"The controller was started with session = clean, stopped, and an alarm was raised while "
        f"it was away; after its restart it sent {sent}, where only the 'start' for the live "
        f"'cleared' alarm was due. A clean session must not receive what was published while it "
        f"was disconnected: connect with clean start on (MQTT 3.1.1: clean_session=True) when "
        f"session = clean."
    )


# -- Waiting on the broker's clock ----------------------------------------------------------
# The experiments below judge the runs started at the module's first experiment (the fixtures
# above): their deadlines count from the run's own moment, not from the experiment's start.


@pytest.mark.broker
@pytest.mark.needs("mqtt5")
@pytest.mark.spec(mqtt5=["MQTT-3.1.2-23"])
def test_session_is_gone_once_its_expiry_interval_has_passed(mqtt_client, expired_session):
    # A controller subscribed with session expiry 1 s and left; then an alarm was published.
    # Its will's delay (an hour) outlives the session: it is sent when the session ends.
    run = expired_session.result()
    ended = run.watcher.wait_for_message(
        run.ended_topic,
        timeout=seconds_left(run.left_at, 1 + PROMPT),
        why="The session had an expiry interval of 1 s: the broker should have ended it (and so "
        "published the will) about a second after the client left.",
    )
    assert ended.payload == b"session ended"
    # How early it may end is not asserted: brokers count expiry in whole seconds, so "1 s" may
    # pass in a moment. That a session with an expiry outlives its connection is shown above.

    back = mqtt_client(run.client_id, clean_start=False, session_expiry=EXPIRY)
    assert not back.connack["session_present"], (
        "Once the session expiry interval has passed, the session is gone: a reconnect with "
        "clean start off finds nothing to resume (session present = 0)."
    )
    back.assert_nothing_received(
        run.topic,
        why="The session took its subscription, and any alarm queued in it, along when it "
        "expired (MQTT 5 §4.1): nothing published while the client was away may be delivered.",
    )


# -- A device after its connection drops ------------------------------------------------


@pytest.mark.solution
@pytest.mark.broker_needs(LOG)  # the runs' own broker is of the shared one's kind
def test_a_device_hears_its_commands_again_after_its_connection_drops(dropped_presses, protocol):
    # The solution's press-01 obeyed a command; then a client with its id and clean start took
    # its connection over and left: its session is lost, as in a restart without persistence.
    # The run waited (ahead, while other experiments ran) for its reconnection and for a
    # SUBSCRIBE after it. With none on its new session, the broker's log tells at once that
    # the command went to nobody; otherwise the press has its time to answer.
    run = dropped_presses[protocol].result()
    commands = run.commands.replace(run.press.topic_root, "{root}")
    unsubscribed = None if run.subscribed_since(run.reconnected_mark) else run.broker.log_mark()
    run.set_temperature(72.0, "lesson 05")
    if run.obeyed(72.0, since=unsubscribed):
        return
    evidence = run.no_subscribe_evidence(run.reconnected_mark, protocol)
    pytest.fail(
        f"press-01's connection dropped and its session was lost (as in a broker restart "
        f"without persistence); it reconnected, but then ignored a 'set' on {commands}: it no "
        f"longer hears its commands. {evidence} A new session starts with no subscriptions "
        f"(CONNACK session present = 0), and paho reconnects by itself without subscribing "
        f"again: subscribe to your commands in on_connect, which runs after every connection, "
        f"not once after connect().",
        pytrace=False,
    )
