"""``python -m sim.controller``: alarms in, commands and decision events out.

A test client plays the devices: it publishes alarms the way a device would
and watches ``<root>/commands/#`` and ``<root>/events/#`` for the controller's
reaction. The session tests stop the controller, publish while it is away and
start it again, which is the persistent-session lesson in miniature.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence

import pytest

from mqtt_factory_lab.contract import validate
from mqtt_factory_lab.core.client import ReceivedMessage, RecordingClient
from mqtt_factory_lab.core.roles import RoleProcess

StartController = Callable[..., RoleProcess]


@pytest.fixture
def controller_id(unique_id) -> str:
    return unique_id("ctl")


@pytest.fixture
def run_controller(broker, sim_program, mqtt_client) -> Iterator[StartController]:
    """``run_controller(controller_id, *args, protocol="5")``: a ready ``python -m sim.controller``.

    Afterwards every controller is stopped, then its session is removed from the
    shared broker (connecting with clean start discards a persistent session).
    The controllers must be gone first: a running one would take its client id back.
    (``broker`` is asked for here so that it is still there for that clean-up.)
    """
    started: list[tuple[str, RoleProcess]] = []

    def start(
        cid: str,
        *args: str,
        protocol: str = "5",
        name: str = "controller",
        mutation: Sequence[str] = (),
    ) -> RoleProcess:
        """:param mutation: options of ``tests.broken.mutate``: run a broken controller."""
        command = ["sim.controller", "--client-id", cid, *args]
        if mutation:
            command = ["tests.broken.mutate", *mutation, *command]
        program = sim_program(*command, protocol=protocol, name=name)
        started.append((cid, program))
        return program

    yield start
    for _, program in started:
        program.stop()
    for cid in {cid for cid, _ in started}:
        mqtt_client(cid, clean_start=True)


def stop_command_for_an_alarm(
    watch: RecordingClient, alarm_topic: str, command_topic: str
) -> ReceivedMessage:
    """Raise an alarm; return the command it causes, checked: QoS 1 and never retained."""
    watch.publish(alarm_topic, alarm("press", "temperature", "raised", 97.5), qos=1)
    stop = watch.wait_for_message(command_topic)
    assert stop.qos == 1, f"commands are QoS 1: {stop.describe()}"
    assert not stop.retain, (
        f"commands are never retained: a retained stop would stop the conveyor again each "
        f"time it reconnects. {stop.describe()}"
    )
    return stop


def test_command_check_catches_a_controller_that_retains_its_commands(
    topic_root, mqtt_client, run_controller, controller_id
):
    watch = watcher(mqtt_client, topic_root)
    run_controller(controller_id, mutation=["--retain", "commands"])
    command_topic = f"{topic_root}/commands/{controller_id}/conveyor"
    with pytest.raises(AssertionError, match="never retained"):
        stop_command_for_an_alarm(watch, f"{topic_root}/alarms/press/temperature", command_topic)
    watch.publish(command_topic, b"", qos=1, retain=True)  # leave no retained command behind


def alarm(device: str, sensor: str, state: str, value: float) -> dict:
    return {
        "ts": time.time(),
        "device_id": device,
        "sensor": sensor,
        "state": state,
        "value": value,
        "low": None,
        "high": 95.0,
        "severity": "critical",
        "message": f"{sensor} {state}",
    }


def watcher(mqtt_client, topic_root: str, protocol: str = "5") -> RecordingClient:
    """Watches commands and events; on MQTT 5 it sees each retain flag as published.

    (A live subscriber otherwise always gets retain=0, whatever the publisher set, and a
    check of ``not message.retain`` could never fail.)
    """
    client = mqtt_client(protocol=protocol)
    as_published = protocol == "5"
    client.subscribe(f"{topic_root}/commands/#", qos=1, retain_as_published=as_published)
    client.subscribe(f"{topic_root}/events/#", qos=1, retain_as_published=as_published)
    return client


def commands(client: RecordingClient, topic_root: str) -> list[tuple[str, str]]:
    """(topic, command) of every command seen so far, in order."""
    return [(m.topic, m.json()["command"]) for m in client.received(f"{topic_root}/commands/#")]


def assert_clear_gives_only_a_start(
    watch: RecordingClient, topic_root: str, controller_id: str, why: str
) -> None:
    """Clear the press temperature alarm: the conveyor's start must be the only command seen."""
    watch.publish(
        f"{topic_root}/alarms/press/temperature",
        alarm("press", "temperature", "cleared", 70.0),
        qos=1,
    )
    conveyor = f"{topic_root}/commands/{controller_id}/conveyor"
    watch.wait_for_message(conveyor)
    watch.sync()  # any earlier command, such as a stop, would have arrived by now
    assert commands(watch, topic_root) == [(conveyor, "start")], why


def test_raised_alarm_stops_target_and_cleared_alarm_starts_it(
    topic_root, mqtt_client, run_controller, controller_id
):
    watch = watcher(mqtt_client, topic_root)
    controller = run_controller(controller_id, "--log-format", "json")
    assert f"ready {controller_id}" in controller.output().splitlines(), (
        f"the ready line names the controller's client id:\n{controller.output()}"
    )
    command_topic = f"{topic_root}/commands/{controller_id}/conveyor"
    events_topic = f"{topic_root}/events/{controller_id}"
    alarm_topic = f"{topic_root}/alarms/press/temperature"

    stop = stop_command_for_an_alarm(watch, alarm_topic, command_topic)
    payload = validate("command", stop.payload)
    assert payload["command"] == "stop", (
        f"the default rule press/temperature=conveyor stops the conveyor; got {payload}"
    )
    assert payload["issued_by"] == controller_id
    decision = validate("decision", watch.wait_for_message(events_topic).payload)
    assert decision["trigger"] == {
        "topic": alarm_topic,
        "device_id": "press",
        "sensor": "temperature",
        "state": "raised",
    }
    assert decision["action"] == {"device_id": "conveyor", "command": "stop"}
    assert decision["controller_id"] == controller_id

    watch.publish(alarm_topic, alarm("press", "temperature", "cleared", 80.0), qos=1)
    watch.wait_for_messages(2, command_topic)
    assert commands(watch, topic_root) == [(command_topic, "stop"), (command_topic, "start")]
    second = validate("decision", watch.wait_for_messages(2, events_topic)[1].payload)
    assert second["action"]["command"] == "start" and second["trigger"]["state"] == "cleared"

    # Every decision is also in the log, as JSON lines with --log-format json.
    logged = controller.wait_for_output(r'"decision"')
    entry = json.loads(logged)
    assert entry["decision"]["action"] == {"device_id": "conveyor", "command": "stop"}


def test_rules_hold_a_target_until_every_alarm_has_cleared(
    topic_root, mqtt_client, run_controller, controller_id
):
    watch = watcher(mqtt_client, topic_root)
    controller = run_controller(
        controller_id, "--rule", "press/temperature=packer", "--rule", "oven/temperature=packer"
    )
    packer = f"{topic_root}/commands/{controller_id}/packer"

    # An alarm no rule mentions changes nothing...
    watch.publish(
        f"{topic_root}/alarms/press/vibration", alarm("press", "vibration", "raised", 9), 1
    )
    # ...each rule's alarm stops the packer...
    watch.publish(
        f"{topic_root}/alarms/press/temperature", alarm("press", "temperature", "raised", 99), 1
    )
    watch.publish(
        f"{topic_root}/alarms/oven/temperature", alarm("oven", "temperature", "raised", 260), 1
    )
    # ...and it restarts only when the last of them clears.
    watch.publish(
        f"{topic_root}/alarms/press/temperature", alarm("press", "temperature", "cleared", 80), 1
    )
    watch.publish(
        f"{topic_root}/alarms/oven/temperature", alarm("oven", "temperature", "cleared", 200), 1
    )

    watch.wait_for_messages(3, packer)
    watch.sync()
    controller.wait_for_output("stays stopped: still raised: oven/temperature")
    assert commands(watch, topic_root) == [(packer, "stop"), (packer, "stop"), (packer, "start")], (
        "expected stop (press), stop (oven), then start only after both cleared; "
        "the vibration alarm matches no rule"
    )


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_persistent_session_acts_on_alarms_queued_while_offline(
    topic_root, mqtt_client, run_controller, controller_id, protocol
):
    watch = watcher(mqtt_client, topic_root)
    first = run_controller(controller_id, "--session", "persistent", protocol=protocol)
    assert first.stop() == 0, first.describe_failure("should exit 0 on SIGTERM")

    # The controller is offline; its session (and subscription) lives on in the broker.
    watch.publish(
        f"{topic_root}/alarms/press/temperature",
        alarm("press", "temperature", "raised", 98.0),
        qos=1,
    )

    second = run_controller(
        controller_id, "--session", "persistent", protocol=protocol, name="again"
    )
    stop = watch.wait_for_message(f"{topic_root}/commands/{controller_id}/conveyor", timeout=10)
    assert stop.json()["command"] == "stop", (
        "the alarm raised while the controller was offline was queued in its persistent "
        "session (QoS 1) and delivered at reconnect; the controller should have acted on it"
    )
    second.wait_for_output("the broker resumed the previous one")


def test_clean_session_loses_alarms_published_while_offline(
    topic_root, mqtt_client, run_controller, controller_id
):
    watch = watcher(mqtt_client, topic_root)
    first = run_controller(controller_id, "--session", "clean")
    first.stop()
    alarm_topic = f"{topic_root}/alarms/press/temperature"
    watch.publish(alarm_topic, alarm("press", "temperature", "raised", 98.0), qos=1)

    run_controller(controller_id, "--session", "clean", name="again")
    assert_clear_gives_only_a_start(
        watch,
        topic_root,
        controller_id,
        "with a clean session nothing was queued while the controller was offline: the "
        "'raised' alarm is lost and only the later 'cleared' is acted on",
    )


def test_retained_alarm_is_stale_and_ignored(
    topic_root, mqtt_client, run_controller, controller_id
):
    watch = watcher(mqtt_client, topic_root)
    alarm_topic = f"{topic_root}/alarms/press/temperature"
    # Someone wrongly retained an alarm; every new subscriber would get it at once.
    watch.publish(alarm_topic, alarm("press", "temperature", "raised", 99.0), qos=1, retain=True)
    try:
        controller = run_controller(controller_id)
        controller.wait_for_output("ignoring the retained message")
        assert_clear_gives_only_a_start(
            watch,
            topic_root,
            controller_id,
            "the retained 'raised' alarm is history, not news: the controller must not stop "
            "the conveyor for it, only react to the live 'cleared'",
        )
    finally:
        watch.publish(alarm_topic, b"", qos=1, retain=True)  # remove the retained alarm
