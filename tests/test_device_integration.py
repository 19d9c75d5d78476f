"""``python -m sim.device`` as a real process against a real broker.

Each test starts the simulator the way a student or ``sim.run_all`` does, waits
for its ``ready <device_id>`` line, and watches the broker with a recording
client. Every payload the device publishes is validated against ``schemas/``
(by topic, with :func:`mqtt_factory_lab.contract.validate_message`), and QoS and retain
flags are checked as the contract states them. Devices run with a high
``--time-scale`` so minutes of plant time pass in a second.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest

from mqtt_factory_lab.contract import validate_message
from mqtt_factory_lab.core.client import ReceivedMessage, RecordingClient
from mqtt_factory_lab.core.roles import RoleProcess
from sim.device import CRASH_EXIT_CODE
from sim.machines import Machine, kind_spec
from sim.topics import Topics


@pytest.fixture
def start_device(
    sim_program: Callable[..., RoleProcess], unique_id: Callable[[str], str]
) -> Callable[..., RoleProcess]:
    """``start_device("press", "--anomaly")``: a ready device on the test's broker and root.

    Its device id, unique to the test (``press-1a2b3c4d``), is the process's ``name``.

    :param protocol: ``"5"`` or ``"3.1.1"`` (through ``VF_MQTT_PROTOCOL``).
    :param on_broker: another broker than the shared one (from ``make_broker``).
    Every device is stopped when the test ends, whatever happened.
    """

    def start(
        kind: str,
        *args: str,
        protocol: str = "5",
        on_broker: Any = None,
        mutation: Sequence[str] = (),
    ) -> RoleProcess:
        device_id = unique_id(kind)
        mutant = ("tests.broken.mutate", *mutation) if mutation else ()
        return sim_program(
            *mutant,
            "sim.device",
            "--device",
            kind,
            "--device-id",
            device_id,
            *args,
            broker=on_broker,
            protocol=protocol,
            name=device_id,
        )

    return start


@pytest.fixture
def topics(topic_root: str) -> Topics:
    return Topics(topic_root)


@pytest.fixture
def status_watcher(mqtt_client: Callable[..., RecordingClient], topics: Topics) -> RecordingClient:
    """A client subscribed to every device's status before the test starts any device."""
    watcher = mqtt_client()
    watcher.subscribe(f"{topics.root}/status/#", qos=1)
    return watcher


@contextmanager
def caught_if_broken(mutation: Sequence[str], match: str) -> Iterator[None]:
    """The checks in the block must pass for the reference and fail, saying ``match``, for a
    broken variant (``mutation``, options of ``tests.broken.mutate``)."""
    if not mutation:
        yield
        return
    with pytest.raises(AssertionError, match=match):
        yield


RETAINING = ["--retain", "telemetry,alarms,events"]
#: the reference, and a device that retains what it must not (each check must catch it)
VARIANTS = [pytest.param((), id="reference"), pytest.param(RETAINING, id="retains-everything")]


def retained_now(mqtt_client: Callable[..., RecordingClient], topic: str) -> ReceivedMessage:
    """What a subscriber arriving now gets first on ``topic``: the broker's retained message."""
    late = mqtt_client()
    late.subscribe(topic, qos=1)
    return late.wait_for_message(topic)


def payloads(messages: list[ReceivedMessage], root: str) -> list[dict[str, Any]]:
    """Validate every message against the contract (by topic) and return the payloads."""
    return [validate_message(m.topic, m.payload, root=root) for m in messages]


def on(topic: str, **fields: Any) -> Callable[[ReceivedMessage], bool]:
    """A predicate: a message on ``topic`` whose JSON payload has these field values."""

    def match(message: ReceivedMessage) -> bool:
        if message.topic != topic:
            return False
        data = message.json()
        return all(data.get(k) == v for k, v in fields.items())

    match.__name__ = f"{topic} with {fields}"
    return match


# -- command line ------------------------------------------------------------------------


def test_help_lists_the_flags(run_program: Callable[..., Any], nowhere: Any) -> None:
    result = run_program("sim.device", "--help", broker=nowhere)
    assert result.returncode == 0, result.stderr
    for flag in (
        "--device",
        "--device-id",
        "--client-id",
        "--seed",
        "--time-scale",
        "--rate",
        "--duration",
        "--crash-after",
        "--anomaly",
        "--log-format",
        "--host",
        "--port",
        "--topic-root",
    ):
        assert flag in result.stdout, f"`python -m sim.device --help` does not mention {flag}"


def test_bad_device_id_is_refused_before_connecting(
    run_program: Callable[..., Any], nowhere: Any
) -> None:
    result = run_program(
        "sim.device", "--device", "press", "--device-id", "press/1", broker=nowhere
    )
    assert result.returncode == 2 and "not a valid device id" in result.stderr, result.stderr


# -- coming online ---------------------------------------------------------------------------


def test_ready_device_has_retained_online_status_and_state(
    start_device: Callable[..., RoleProcess],
    mqtt_client: Callable[..., RecordingClient],
    topics: Topics,
) -> None:
    device = start_device("press")
    late = mqtt_client()  # subscribes only now: what it gets was retained by the broker
    late.subscribe(topics.status(device.name), qos=1)
    late.subscribe(topics.state(device.name), qos=1)
    status = late.wait_for_message(topics.status(device.name))
    state = late.wait_for_message(topics.state(device.name))
    assert status.retain and state.retain, (
        "a subscriber that arrives after the device printed 'ready' must get its status and "
        f"state from the broker's retained store; got {status.describe()} / {state.describe()}"
    )
    status_data, state_data = payloads([status, state], topics.root)
    assert (status_data["status"], status_data.get("reason")) == ("online", "connected")
    assert state_data["state"] == "running" and state_data["kind"] == "press"
    assert state_data["setpoints"] == kind_spec("press").default_setpoints()


@pytest.mark.parametrize("mutation", VARIANTS)
def test_telemetry_is_qos0_not_retained_and_plausible(
    start_device: Callable[..., RoleProcess],
    mqtt_client: Callable[..., RecordingClient],
    topics: Topics,
    mutation: Sequence[str],
) -> None:
    watcher = mqtt_client()
    # retain as published: a live subscriber would otherwise see retain=0 whatever was sent
    watcher.subscribe(f"{topics.root}/telemetry/#", qos=1, retain_as_published=True)
    device = start_device("conveyor", "--time-scale", "60", "--rate", "20", mutation=mutation)
    messages = watcher.wait_for_messages(30, f"{topics.root}/telemetry/#", timeout=10)
    spec = kind_spec("conveyor")
    last_seq: dict[str, int] = {}
    with caught_if_broken(mutation, "telemetry must not be retained"):
        for message in messages:
            assert not message.retain, f"telemetry must not be retained: {message.describe()}"
    for message, data in zip(messages, payloads(messages, topics.root), strict=True):
        assert message.qos == 0, (
            f"subscribed at QoS 1 but {message.topic} arrived at QoS {message.qos}: the broker "
            "delivers min(publish QoS, subscription QoS), so the device must publish telemetry "
            "at QoS 0"
        )
        sensor = spec.sensor(data["sensor"])
        assert message.topic == topics.telemetry(device.name, sensor.name)
        assert data["unit"] == sensor.unit
        assert sensor.low is None and sensor.high is not None, "conveyor limits changed?"
        assert data["value"] <= sensor.high, (
            f"a healthy conveyor's {sensor.name} read {data['value']} {sensor.unit}, outside its "
            f"normal range {sensor.low}..{sensor.high}"
        )
        assert data["seq"] > last_seq.get(sensor.name, -1), "seq must count up per sensor"
        last_seq[sensor.name] = data["seq"]
    assert set(last_seq) == {"speed", "motor_current"}


def test_device_publishes_what_the_seeded_model_computes(
    start_device: Callable[..., RoleProcess],
    mqtt_client: Callable[..., RecordingClient],
    topics: Topics,
    lab_seed: int,
) -> None:
    """Same seed, same time scale and rate: the values are the model's, reading for reading."""
    watcher = mqtt_client()
    watcher.subscribe(f"{topics.root}/telemetry/#", qos=0)
    oven = start_device("oven", "--seed", str(lab_seed), "--time-scale", "30", "--rate", "10")
    got = payloads(watcher.wait_for_messages(10, timeout=10), topics.root)
    model = Machine("oven", seed=lab_seed, identity=oven.name)
    rounds = max(d["seq"] for d in got) + 1
    expected = [model.step(30 / 10)["temperature"].value for _ in range(rounds)]
    for data in got:
        assert data["value"] == expected[data["seq"]], (
            f"reading seq {data['seq']} of the oven with --seed {lab_seed} was {data['value']}, "
            f"but Machine('oven', seed={lab_seed}) stepped by 3 plant seconds gives "
            f"{expected[data['seq']]}"
        )
        assert data["plant_time"] == pytest.approx(3.0 * (data["seq"] + 1))


# -- alarms ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mutation", VARIANTS)
def test_anomaly_raises_then_clears_an_alarm_at_qos1(
    start_device: Callable[..., RoleProcess],
    mqtt_client: Callable[..., RecordingClient],
    topics: Topics,
    lab_seed: int,
    mutation: Sequence[str],
) -> None:
    watcher = mqtt_client()
    watcher.subscribe(f"{topics.root}/alarms/#", qos=2, retain_as_published=True)
    watcher.subscribe(f"{topics.root}/state/#", qos=1)
    device = start_device(
        "conveyor",
        *("--anomaly", "--seed", str(lab_seed), "--time-scale", "60", "--rate", "10"),
        mutation=mutation,
    )
    model = Machine("conveyor", seed=lab_seed, identity=device.name, anomaly=True)
    raised, cleared = watcher.wait_for_messages(2, f"{topics.root}/alarms/#", timeout=10)
    first, second = payloads([raised, cleared], topics.root)
    assert (first["state"], second["state"]) == ("raised", "cleared"), (
        f"one excursion gives one 'raised' then one 'cleared': {first} / {second}"
    )
    assert first["sensor"] == second["sensor"] == model.excursion.sensor, (
        "the first excursion's sensor is fixed by the seed and the device id"
    )
    sensor = kind_spec("conveyor").sensor(first["sensor"])
    assert first["value"] > sensor.high, f"raised at {first['value']}, inside the limit?"
    assert second["value"] <= sensor.high - sensor.hysteresis
    for message in (raised, cleared):
        assert message.qos == 1, (
            f"alarms are published at QoS 1 (subscribed at QoS 2): {message.describe()}"
        )
        with caught_if_broken(mutation, "alarms are not retained"):
            assert not message.retain, (
                f"alarms are not retained: a retained 'raised' would reach every new subscriber "
                f"as if it were news. {message.describe()}"
            )
        assert message.topic == topics.alarm(device.name, sensor.name)
    watcher.wait_for_message(
        lambda m: (
            m.topic == topics.state(device.name) and m.json()["counters"]["alarms_raised"] >= 1
        ),
        timeout=5,
    )


# -- commands ---------------------------------------------------------------------------------


def test_commands_change_the_retained_state(
    start_device: Callable[..., RoleProcess],
    mqtt_client: Callable[..., RecordingClient],
    topics: Topics,
) -> None:
    device = start_device("packer", "--time-scale", "60", "--rate", "10")
    state_topic = topics.state(device.name)
    watcher = mqtt_client()
    watcher.subscribe(state_topic, qos=1)
    dashboard = mqtt_client()
    command_topic = topics.command("dashboard", device.name)

    dashboard.publish(command_topic, {"command": "stop", "reason": "manual"}, qos=1)
    watcher.wait_for_message(on(state_topic, state="stopped", reason="manual"))
    dashboard.publish(command_topic, {"command": "set", "setpoint": "rate", "value": 75}, qos=1)
    watcher.wait_for_message(lambda m: on(state_topic)(m) and m.json()["setpoints"]["rate"] == 75)
    dashboard.publish(command_topic, {"command": "start", "issued_by": "operator-7"}, qos=1)
    watcher.wait_for_message(on(state_topic, state="running", reason="start from operator-7"))
    payloads(watcher.received(state_topic), topics.root)

    retained = retained_now(mqtt_client, state_topic)
    data = validate_message(retained.topic, retained.payload, root=topics.root)
    assert retained.retain and data["state"] == "running" and data["setpoints"] == {"rate": 75}, (
        f"the retained state must be the latest: {retained.describe()}"
    )
    assert data["counters"]["commands_accepted"] == 3
    assert data["counters"]["produced"] > 0, "a packer that ran for minutes produced packs"


@pytest.mark.parametrize("mutation", VARIANTS)
def test_malformed_command_gives_error_event_and_device_keeps_running(
    start_device: Callable[..., RoleProcess],
    mqtt_client: Callable[..., RecordingClient],
    topics: Topics,
    mutation: Sequence[str],
) -> None:
    device = start_device("oven", "--time-scale", "60", "--rate", "10", mutation=mutation)
    events = topics.events(device.name)
    telemetry = topics.telemetry(device.name, "temperature")
    watcher = mqtt_client()
    watcher.subscribe(events, qos=1, retain_as_published=True)
    watcher.subscribe(telemetry, qos=0)
    sender = mqtt_client()
    command_topic = topics.command("dashboard", device.name)
    bad = {
        b"\xff\xfe not json": "not UTF-8",
        b'{"command": "launch"}': "unknown command",
        b'{"command": "set", "setpoint": "speed", "value": 1}': "has no setpoint 'speed'",
    }
    for payload in bad:
        sender.publish(command_topic, payload, qos=1)
    got = watcher.wait_for_messages(len(bad), events, timeout=5)
    for message, data, (payload, why) in zip(
        got, payloads(got, topics.root), bad.items(), strict=True
    ):
        assert message.qos == 1, message.describe()
        with caught_if_broken(mutation, "events are not retained"):
            assert not message.retain, f"events are not retained: {message.describe()}"
        assert data["event"] == "command_rejected" and why in data["reason"], data
        assert data["topic"] == command_topic
        assert data["received"] == payload.decode("utf-8", "replace")
    so_far = len(watcher.received(telemetry))
    watcher.wait_for_messages(so_far + 3, telemetry, timeout=5)  # the oven still reports
    assert device.is_running(), device.describe_failure("should survive malformed commands")


@pytest.mark.broker_needs("restart")
def test_device_comes_back_after_a_broker_restart(
    start_device: Callable[..., RoleProcess],
    mqtt_client: Callable[..., RecordingClient],
    make_broker: Callable[..., Any],
    topics: Topics,
) -> None:
    """The broker forgets everything (no persistence): the device must re-announce itself."""
    own = make_broker("open")
    device = start_device("conveyor", "--time-scale", "60", "--rate", "10", on_broker=own)
    own.restart()
    status_topic, state_topic = topics.status(device.name), topics.state(device.name)
    watcher = mqtt_client(broker=own)
    watcher.subscribe(status_topic, qos=1)
    watcher.subscribe(state_topic, qos=1)
    # Live or retained, these can only come from the device re-announcing itself.
    watcher.wait_for_message(on(status_topic, status="online"), timeout=15)
    watcher.wait_for_message(state_topic, timeout=5)
    late = mqtt_client(broker=own)
    late.subscribe(status_topic, qos=1)
    late.subscribe(state_topic, qos=1)
    status = late.wait_for_message(status_topic)
    assert status.retain and status.json()["status"] == "online", (
        "after a broker restart without persistence, the retained status is gone until the "
        f"device reconnects and publishes it again; got {status.describe()}\n"
        + device.describe_failure("did not announce itself again")
    )
    assert late.wait_for_message(state_topic).retain, "the state must be retained again too"
    late.publish(topics.command("dashboard", device.name), {"command": "stop"}, qos=1)
    late.wait_for_message(on(state_topic, state="stopped"), timeout=5)


# -- going offline ------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_crash_makes_the_broker_publish_the_last_will(
    start_device: Callable[..., RoleProcess],
    status_watcher: RecordingClient,
    mqtt_client: Callable[..., RecordingClient],
    topics: Topics,
    protocol: str,
) -> None:
    device = start_device("environment", "--crash-after", "0.3", protocol=protocol)
    status = topics.status(device.name)
    will = status_watcher.wait_for_message(on(status, status="offline"), timeout=10)
    data = validate_message(will.topic, will.payload, root=topics.root)
    assert data["reason"] == "last-will", (
        f"the device vanished without DISCONNECT, so the offline status must be its Last Will, "
        f"not {data}\n" + device.describe_failure("crashed with --crash-after")
    )
    assert device.wait_exit(10) == CRASH_EXIT_CODE
    retained = retained_now(mqtt_client, status)
    assert retained.retain and retained.json()["reason"] == "last-will", (
        f"the will is retained, so a late dashboard sees the device offline: {retained.describe()}"
    )


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_sigterm_publishes_offline_and_exits_zero(
    start_device: Callable[..., RoleProcess],
    status_watcher: RecordingClient,
    mqtt_client: Callable[..., RecordingClient],
    topics: Topics,
    protocol: str,
) -> None:
    device = start_device("robot_arm", "--rate", "5", protocol=protocol)
    device.signal(signal.SIGTERM)
    assert device.wait_exit(10) == 0, device.describe_failure("must exit 0 on SIGTERM")
    status = topics.status(device.name)
    offline = status_watcher.wait_for_message(on(status, status="offline"), timeout=5)
    data = validate_message(offline.topic, offline.payload, root=topics.root)
    assert data["reason"] == "shutdown", f"a clean stop announces itself: {data}"
    status_watcher.assert_nothing_received(
        on(status, reason="last-will"),
        why="after a clean DISCONNECT the broker discards the Last Will",
    )
    assert retained_now(mqtt_client, status).json()["reason"] == "shutdown"


def test_duration_ends_the_run_gracefully(
    start_device: Callable[..., RoleProcess],
    status_watcher: RecordingClient,
    mqtt_client: Callable[..., RecordingClient],
    topics: Topics,
) -> None:
    device = start_device("press", "--duration", "0.5", "--log-format", "json")
    assert device.wait_exit(10) == 0, device.describe_failure("should stop after --duration")
    status_watcher.wait_for_message(on(topics.status(device.name), reason="shutdown"), timeout=5)
    # stdout has the ready line; with --log-format json every other line is a JSON object.
    log_lines = [
        line
        for line in device.output().splitlines()
        if line.strip() and line != f"ready {device.name}"
    ]
    entries = [json.loads(line) for line in log_lines]
    assert any("--duration" in e["message"] for e in entries), log_lines
