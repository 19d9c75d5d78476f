"""Lesson 03 — Retained messages: the last known state, waiting for whoever asks.

An MQTT broker normally forwards a message to the clients subscribed *right
now* and then forgets it. A client that subscribes a second later has missed
it. For most factory traffic that is right: a temperature reading from a
minute ago is history, and the next one is on its way.

Some facts, though, stay true until they change: *the press is running*,
*the oven is online*. A dashboard that opens at 09:00 should not wait until
the press changes state at 11:30 to learn that it is running. So the
publisher sets the **retain flag**, and the broker keeps the message:

* The broker stores **one** retained message per topic: each new retained
  publish replaces the previous one. It is a *last value*, not a history.
* Every new subscription whose filter matches the topic gets the stored
  message at once, with the **retain flag set**, so the receiver knows it is
  stored state and not news. Wildcard filters get every matching topic.
* Subscribers that were already there get the publish live, and then the
  retain flag is **cleared** (MQTT 3.1.1 §3.3.1.3, MQTT 5 §3.3.1.3), unless an
  MQTT 5 subscriber asked for *retain as published*.
* A retained publish with an **empty payload** deletes the stored message.
  That is how you retire a device that will never come back.
* MQTT 5 adds **retain handling** to a subscription: 0 = send retained
  messages at every subscribe, 1 = only when the subscription is new,
  2 = never.
* Retained messages live in the broker's memory. They survive a broker
  restart only when the broker persists them (Mosquitto: ``persistence
  true``); otherwise the restarted broker knows nothing.

In the virtual factory, ``factory/state/<device>`` and
``factory/status/<device>`` are retained; telemetry is not.

Pitfalls:

* Retaining telemetry: a late subscriber then takes a stale reading for a
  live one, with nothing but the retain flag to warn it.
* Forgetting to clear: a decommissioned machine stays "running" forever on
  every new dashboard.
* Expecting history: a late subscriber sees only the last state, never the
  states in between.
* Retaining commands "so that an offline device gets them": a command is an event, not
  state. Stored, a ``stop`` sent at 09:00 is handed to the press when it restarts at
  15:00, and obeyed again. A device that must not miss commands while away keeps a
  persistent session (lesson 05); the controller publishes commands with retain=False.

Try it (the seed's exercise 3), with the broker of ``docker compose up`` and
``python -m sim.run_all --no-dashboard`` running: start the dashboard, open
http://localhost:8080, stop it (Ctrl-C) and start it again — every card shows its
device's state and online status at once, before any device publishes again::

    python -m sim.dashboard --username dashboard  # Ctrl-C, start again: the state is there
    python -m sim.cli sub --username observer --topic 'factory/state/#' --count 6
    python -m sim.cli sub --username observer --topic 'factory/telemetry/#' --count 1
                                                  # (waits for the next reading: not retained)

Your programs in this lesson: ``[roles.device]`` of your manifest. The lab starts a
press (``device("press")``) on each MQTT version and waits for its retained ``online``
status. It must publish its state and status retained (QoS 1), never its telemetry, and
publish each new state retained again — after a ``stop`` command
(``<root>/commands/dashboard/<device_id>``) a dashboard opened later must see
``stopped``. Your ``[roles.controller]`` (started like lesson 02's, with the rule
``press/temperature=conveyor``) must send its commands without the retain flag.

Run it: ``pytest labs/03_retained.py -v``; grade your device with
``pytest labs/03_retained.py -m solution --solution path/to/solution.toml``. Each
experiment publishes device state JSON (``schemas/state.schema.json``) and checks what a
subscriber sees.
"""

from __future__ import annotations

import time

import pytest
from paho.mqtt.client import topic_matches_sub as mqtt_topic_matches

from mqtt_factory_lab.brokers import CONFIG, RESTART
from mqtt_factory_lab.contract import validate
from mqtt_factory_lab.experiment import unique
from mqtt_factory_lab.experiment.qos import publish_alarm_until_command
from mqtt_factory_lab.experiment.retained import device_state
from mqtt_factory_lab.fixtures.factory import start_controller

pytestmark = pytest.mark.lesson(3)


@pytest.mark.broker
@pytest.mark.needs("retain")
@pytest.mark.spec(
    mqtt311=["MQTT-3.3.1-5", "MQTT-3.3.1-6", "MQTT-3.3.1-8"], mqtt5=["MQTT-3.3.1-5", "MQTT-3.3.1-9"]
)
@pytest.mark.parametrize("qos", [0, 1, 2], ids=lambda q: f"qos{q}")
def test_late_subscriber_gets_last_retained_state(mqtt_client, topic_root, protocol, qos):
    topic = f"{topic_root}/state/press-01"
    sent = device_state("press-01", "running", produced=42)
    publisher = mqtt_client(protocol=protocol)
    publisher.publish(topic, sent, qos=qos, retain=True)
    publisher.disconnect()

    dashboard = mqtt_client(protocol=protocol)
    dashboard.subscribe(topic, qos=2)
    message = dashboard.wait_for_message(
        topic,
        timeout=2,
        why="A retained message is stored by the broker and handed at once to every new "
        "subscriber: the dashboard subscribed after the publisher left, and should still have "
        "got the press's state without waiting for a new publish.",
    )

    assert message.retain, (
        "The dashboard subscribed after the publisher had left, and still got the state: that is "
        "the broker delivering its stored copy. Such a delivery must carry the retain flag, so the "
        "receiver can tell stored state from live news; it arrived with retain=0."
    )
    received = validate("state", message.payload)
    assert received == sent, (
        f"The broker must hand back the retained message exactly as published; it sent {received}"
    )


@pytest.mark.broker
@pytest.mark.needs("retain")
@pytest.mark.spec(mqtt311=["MQTT-3.8.4-6"], mqtt5=["MQTT-3.8.4-8"])
@pytest.mark.parametrize("qos", [0, 1, 2], ids=lambda q: f"qos{q}")
def test_stored_state_comes_at_the_lower_of_its_qos_and_the_granted_qos(
    mqtt_client, topic_root, protocol, qos
):
    topic = f"{topic_root}/state/press-01"
    publisher = mqtt_client(protocol=protocol)
    publisher.publish(topic, device_state("press-01", "running"), qos=qos, retain=True)

    dashboard = mqtt_client(protocol=protocol)
    dashboard.subscribe(topic, qos=2)
    # A broker may grant less than QoS 2 (SUBACK): delivery is then capped at what it granted.
    granted = dashboard.granted_qos(topic)
    message = dashboard.wait_for_message(
        topic, timeout=2, why="A new subscriber gets the stored (retained) state at once."
    )

    expected = min(qos, granted)
    assert message.qos == expected, (
        f"A message is delivered at the lower of the publish QoS ({qos}) and the QoS the broker "
        f"granted the subscription in its SUBACK ({granted}), so QoS {expected} was expected on "
        f"{topic}; it came at QoS {message.qos}."
    )


@pytest.mark.broker
@pytest.mark.needs("retain")
@pytest.mark.spec(mqtt311=["MQTT-3.3.1-5", "MQTT-3.3.1-6"], mqtt5=["MQTT-3.3.1-5"])
def test_broker_keeps_only_the_last_retained_message_per_topic(mqtt_client, topic_root, protocol):
    topic = f"{topic_root}/state/press-01"
    publisher = mqtt_client(protocol=protocol)
    for state in ("running", "stopped", "fault"):
        publisher.publish(topic, device_state("press-01", state), qos=1, retain=True)

    dashboard = mqtt_client(protocol=protocol)
    dashboard.subscribe(topic, qos=1)
    dashboard.sync()
    received = dashboard.received(topic)

    assert len(received) == 1, (
        f"Three retained states were published to {topic}, but a broker keeps only one retained "
        f"message per topic, each replacing the one before. The late subscriber got "
        f"{len(received)}: {[m.json()['state'] for m in received]}."
    )
    assert validate("state", received[0].payload)["state"] == "fault", (
        "The retained message is the *last* one published (fault), not the first or any other."
    )


@pytest.mark.broker
@pytest.mark.needs("retain")
@pytest.mark.spec(
    mqtt311=["MQTT-3.3.1-10", "MQTT-3.3.1-11"], mqtt5=["MQTT-3.3.1-6", "MQTT-3.3.1-7"]
)
def test_empty_retained_payload_clears_the_topic(mqtt_client, topic_root, protocol):
    topic = f"{topic_root}/state/press-retired"
    publisher = mqtt_client(protocol=protocol)
    publisher.publish(topic, device_state("press-retired", "stopped"), qos=1, retain=True)
    publisher.publish(topic, b"", qos=1, retain=True)

    dashboard = mqtt_client(protocol=protocol)
    dashboard.subscribe(topic, qos=1)
    dashboard.assert_nothing_received(
        topic,
        why="A retained publish with an empty payload deletes the stored message: a new "
        "subscriber must find nothing, as if the device never existed.",
    )


@pytest.mark.broker
@pytest.mark.needs("retain")
@pytest.mark.spec(mqtt311=["MQTT-3.3.1-8", "MQTT-3.3.1-9"], mqtt5=["MQTT-3.3.1-12"])
def test_retain_flag_marks_stored_messages_not_live_ones(mqtt_client, topic_root, protocol):
    topic = f"{topic_root}/state/conveyor-01"
    live_watcher = mqtt_client(protocol=protocol)
    live_watcher.subscribe(topic, qos=1)

    publisher = mqtt_client(protocol=protocol)
    publisher.publish(topic, device_state("conveyor-01", "running"), qos=1, retain=True)
    live = live_watcher.wait_for_message(
        topic, why="A subscriber that is already there gets every matching publish live."
    )

    late_watcher = mqtt_client(protocol=protocol)
    late_watcher.subscribe(topic, qos=1)
    stored = late_watcher.wait_for_message(
        topic, why="A late subscriber gets the broker's stored copy of a retained message."
    )

    assert not live.retain, (
        "A subscriber that was already subscribed gets the publish as live news, so the broker "
        "clears the retain flag when forwarding it (MQTT §3.3.1.3); it arrived with retain=1."
    )
    assert stored.retain, (
        "A subscriber that arrives later gets the broker's stored copy, which must carry the "
        "retain flag; it arrived with retain=0."
    )


@pytest.mark.broker
@pytest.mark.needs("mqtt5", "retain")
@pytest.mark.spec(mqtt5=["MQTT-3.3.1-12", "MQTT-3.3.1-13"])
def test_retain_as_published_keeps_the_flag_on_live_messages(mqtt_client, topic_root):
    topic = f"{topic_root}/state/oven-01"
    bridge = mqtt_client(protocol="5")
    bridge.subscribe(topic, qos=1, retain_as_published=True)
    plain = mqtt_client(protocol="5")
    plain.subscribe(topic, qos=1)

    publisher = mqtt_client(protocol="5")
    publisher.publish(topic, device_state("oven-01", "running"), qos=1, retain=True)

    assert bridge.wait_for_message(topic).retain, (
        "With the MQTT 5 subscription option retain-as-published, the broker forwards the "
        "retain flag as the publisher set it, even live (bridges need this to copy retained "
        "state onwards); it arrived with retain=0."
    )
    assert not plain.wait_for_message(topic).retain, (
        "Without retain-as-published, a live message reaches current subscribers with the "
        "retain flag cleared; it arrived with retain=1."
    )


@pytest.mark.broker
@pytest.mark.needs("mqtt5", "retain")
@pytest.mark.spec(mqtt5=["MQTT-3.3.1-9", "MQTT-3.3.1-10", "MQTT-3.3.1-11", "MQTT-3.8.4-4"])
@pytest.mark.parametrize(
    ("retain_handling", "at_first", "at_again"),
    [
        pytest.param(0, 1, 1, id="0-send-at-every-subscribe"),
        pytest.param(1, 1, 0, id="1-send-only-for-a-new-subscription"),
        pytest.param(2, 0, 0, id="2-never-send"),
    ],
)
def test_retain_handling_decides_when_stored_state_is_sent(
    mqtt_client, topic_root, retain_handling, at_first, at_again
):
    topic = f"{topic_root}/state/packer-01"
    publisher = mqtt_client(protocol="5")
    publisher.publish(topic, device_state("packer-01", "running"), qos=1, retain=True)

    dashboard = mqtt_client(protocol="5")
    dashboard.subscribe(topic, qos=1, retain_handling=retain_handling)
    dashboard.sync()
    first = len(dashboard.received(topic))
    dashboard.subscribe(topic, qos=1, retain_handling=retain_handling)
    dashboard.sync()
    again = len(dashboard.received(topic)) - first

    meaning = {
        0: "0 means: send the stored message at every SUBSCRIBE, even a repeated one",
        1: "1 means: send it only when the subscription did not exist yet",
        2: "2 means: never send stored messages for this subscription",
    }[retain_handling]
    assert (first, again) == (at_first, at_again), (
        f"Retain handling {meaning}. Expected {at_first} retained message(s) at the first "
        f"subscribe and {at_again} at the repeated one; got {first} and {again}."
    )


@pytest.mark.broker
@pytest.mark.needs("retain", "wildcards")
@pytest.mark.spec(
    mqtt311=["MQTT-3.3.1-6", "MQTT-3.3.2-3"],
    mqtt5=["MQTT-3.3.1-9", "MQTT-3.3.2-3"],
)
def test_wildcard_subscription_receives_every_matching_retained_topic(
    mqtt_client, topic_root, protocol
):
    devices = ["press-01", "conveyor-01", "oven-01"]
    publisher = mqtt_client(protocol=protocol)
    for device in devices:
        publisher.publish(f"{topic_root}/state/{device}", device_state(device, "running"), 1, True)
    status = {"ts": time.time(), "device_id": "press-01", "status": "online"}
    publisher.publish(f"{topic_root}/status/press-01", status, qos=1, retain=True)

    dashboard = mqtt_client(protocol=protocol)
    pattern = f"{topic_root}/state/+"
    dashboard.subscribe(pattern, qos=1)
    dashboard.sync()
    strays = [m for m in dashboard.received() if not mqtt_topic_matches(pattern, m.topic)]
    assert not strays, (
        f"A subscription to {pattern} must receive only topics its filter matches, but the "
        f"broker sent {len(strays)} other one(s): " + "; ".join(m.describe() for m in strays[:3])
    )
    got = sorted(validate("state", m.payload)["device_id"] for m in dashboard.received())

    assert got == sorted(devices), (
        f"A new subscription to {topic_root}/state/+ must receive the stored state of every "
        f"device whose topic matches the filter (and nothing else, such as status topics): "
        f"expected {sorted(devices)}, got {got}."
    )
    assert all(m.retain for m in dashboard.received()), "Stored messages carry the retain flag."


@pytest.mark.broker
@pytest.mark.broker_needs(RESTART, CONFIG)
@pytest.mark.parametrize(
    ("variant", "survives"),
    [
        pytest.param("persistent", True, id="persistence-on"),
        pytest.param("open", False, id="persistence-off"),
    ],
)
@pytest.mark.rule("may")  # persistence is the implementation's to offer; Mosquitto's is taught
def test_retained_state_survives_restart_only_with_persistence(
    make_broker, mqtt_client, topic_root, variant, survives
):
    broker = make_broker(variant)
    topic = f"{topic_root}/state/press-01"
    publisher = mqtt_client(broker=broker)
    publisher.publish(topic, device_state("press-01", "running"), qos=1, retain=True)
    publisher.disconnect()

    broker.restart()

    dashboard = mqtt_client(broker=broker)
    dashboard.subscribe(topic, qos=1)
    dashboard.sync()
    kept = dashboard.received(topic)
    if survives:
        assert len(kept) == 1 and kept[0].retain, (
            "With `persistence true` Mosquitto writes retained messages to its database when it "
            "stops and reloads them at start, so the state published before the restart must "
            f"still be there; the late subscriber got {len(kept)} message(s)."
        )
        assert validate("state", kept[0].payload)["state"] == "running"
    else:
        assert not kept, (
            "Without persistence, retained messages live only in the broker's memory: after a "
            f"restart a new subscriber must find nothing, but it got {len(kept)} message(s)."
        )


# -- The factory's own devices ---------------------------------------------------------
# The experiments below start a device of the solution under test (``--solution``;
# by default the lab's own ``sim.device``) and check that it uses retained messages
# the way the factory's dashboards rely on.


@pytest.mark.solution
def test_device_state_and_status_wait_for_late_dashboards(module_device, mqtt_client):
    press = module_device("press")  # kept for this module and protocol: it is only watched
    state_topic, status_topic = press.topic("state"), press.topic("status")

    # The device is online; a dashboard opens only now. It asks to see each retain flag as the
    # device set it (MQTT 5 retain-as-published), so a state the device sends right now counts too.
    dashboard = mqtt_client()
    dashboard.subscribe(state_topic, qos=1, retain_as_published=True)
    dashboard.subscribe(status_topic, qos=1, retain_as_published=True)
    for topic, what in ((state_topic, "state"), (status_topic, "online status")):
        message = dashboard.wait_for_message(
            topic,
            why=f"Nothing came on {topic} for a dashboard that subscribed after "
            f"{press.device_id} came online. A device publishes its {what} with the retain "
            "flag, so that the broker keeps the last one and hands it at once to every later "
            "subscriber: publish it with retain=True (QoS 1).",
        )
        assert message.retain, (
            f"The device published its {what} on {topic} without the retain flag "
            f"({message.describe()}). The broker stores a message only when the publisher sets "
            "retain; without it a dashboard opened later waits for the next change to learn "
            f"the {what}. Publish it with retain=True (QoS 1)."
        )
    state = validate("state", dashboard.received(state_topic)[0].payload)
    status = validate("status", dashboard.received(status_topic)[0].payload)
    assert state["device_id"] == press.device_id
    assert status["status"] == "online", (
        f"The stored status of a running device must be 'online', not {status['status']!r}."
    )


@pytest.mark.solution
def test_device_does_not_retain_telemetry(module_device, mqtt_client):
    press = module_device("press")  # kept for this module and protocol: it is only watched
    readings = f"{press.topic_root}/telemetry/{press.device_id}/#"

    # Retain-as-published shows the flag each reading was sent with, whenever it was sent.
    watcher = mqtt_client()
    watcher.subscribe(readings, qos=0, retain_as_published=True)
    seen = watcher.wait_for_messages(
        5, readings, why="A running device publishes telemetry continuously."
    )
    retained = [m for m in seen if m.retain]
    # A subscriber arriving now finds whatever the broker stored, even from long ago.
    late = mqtt_client()
    late.subscribe(readings, qos=0)
    late.sync()
    retained += [m for m in late.received(readings) if m.retain]

    for message in seen:
        validate("telemetry", message.payload)
    assert not retained, (
        f"The device publishes telemetry retained: {retained[0].describe()}. A reading is "
        "history the moment it is sent; retained, the broker hands it to the next subscriber "
        "as if it were current. Publish telemetry with retain=False."
    )


@pytest.mark.solution
def test_device_retained_state_follows_the_device(device, mqtt_client, topic_root, protocol):
    press = device("press", protocol=protocol)
    state_topic = press.topic("state")
    watcher = mqtt_client()
    watcher.subscribe(state_topic, qos=1)
    watcher.wait_for_message(state_topic, why="A device's state is retained on its state topic.")

    stop = {"command": "stop", "reason": "lesson 03: does the stored state follow?"}
    watcher.publish(f"{topic_root}/commands/dashboard/{press.device_id}", stop, qos=1)
    watcher.wait_for_message(
        lambda m: m.topic == state_topic and m.json().get("state") == "stopped",
        why=f"A device that obeys a stop command publishes its new state on {state_topic}.",
    )

    # A dashboard opened after the stop must see the device as it is now.
    dashboard = mqtt_client()
    dashboard.subscribe(state_topic, qos=1)
    stored = dashboard.wait_for_message(
        state_topic,
        why=f"The broker should still hold a retained state on {state_topic}.",
    )
    shown = validate("state", stored.payload)["state"]
    assert stored.retain and shown == "stopped", (
        f"A dashboard opened after the stop sees {shown!r} ({stored.describe()}). The broker "
        "keeps only the last *retained* message per topic, so every state change must be "
        "published retained, not just the first one: publish each new state with retain=True."
    )


#: the controller's rule in this lesson: an alarm on the press's temperature stops the conveyor
RULE = "press/temperature=conveyor"


@pytest.mark.solution
def test_controller_does_not_retain_its_commands(
    factory_launcher, mqtt_client, topic_root, protocol
):
    commands = f"{topic_root}/commands/+/conveyor"
    watcher = mqtt_client()
    watcher.subscribe(commands, qos=1, retain_as_published=True)
    start_controller(factory_launcher(protocol=protocol), unique("controller"), RULE, "clean")
    # Publish the alarm until the controller answers: it may be connected before it subscribed.
    command = publish_alarm_until_command(mqtt_client, watcher, topic_root, "raised", None)
    if command is None:
        pytest.fail(
            f"The controller (rule {RULE}) sent no command to the conveyor on "
            f"{{root}}/commands/<publisher>/conveyor within 5 s of the press's temperature "
            f"alarm on {{root}}/alarms/press/temperature: it must subscribe to the alarms and "
            "act on them (lesson 02).",
            pytrace=False,
        )
    # A conveyor that restarts later subscribes now: what does the broker hand it?
    restarted = mqtt_client()
    restarted.subscribe(commands, qos=1)
    restarted.sync()
    stored = [m for m in restarted.received(commands) if m.retain]
    cleaner = mqtt_client()
    for message in stored:  # leave nothing stored behind on the broker
        cleaner.publish(message.topic, b"", qos=1, retain=True)
    if command.retain or stored:
        shown = (stored or [command])[0]
        pytest.fail(
            f"The controller published its command retained ({shown.describe()}): the broker "
            f"stores it and hands it to every device that subscribes later, so a conveyor "
            f"restarting hours from now obeys this stale "
            f"{validate('command', shown.payload)['command']!r} again. A command is an event, "
            "never state: publish commands with retain=False (a device that must not miss "
            "commands while away keeps a persistent session, lesson 05).",
            pytrace=False,
        )
