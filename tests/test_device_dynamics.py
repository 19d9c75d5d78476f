"""The machine models and the device's decisions, without a broker.

:mod:`sim.machines` promises plausible, reproducible values: the same seed gives
the same series, a setpoint change is followed with first-order lag, noise and
drift stay within 3 sigma, a stopped machine relaxes to idle and ``--anomaly``
injects excursions on a seeded schedule. :class:`sim.device.DeviceCore` turns
readings and commands into the messages of the payload contract; every message
it returns here is checked against ``schemas/`` by topic.
"""

from __future__ import annotations

import doctest
import math

import pytest

import sim.device
import sim.machines
from mqtt_factory_lab.contract import validate_message
from sim.device import DeviceCore, Outgoing
from sim.machines import (
    CLIP_SIGMAS,
    DEVICE_KINDS,
    FAULT,
    RUNNING,
    STOPPED,
    AnomalySchedule,
    Machine,
    TransitionRefused,
    kind_spec,
)
from sim.topics import Topics

ROOT = "lab/dynamics/factory"
NOW = 1767225600.0


def series(machine: Machine, steps: int, dt: float = 1.0) -> list[dict[str, float]]:
    return [
        {name: reading.value for name, reading in machine.step(dt).items()} for _ in range(steps)
    ]


def test_module_examples_still_run() -> None:
    for module in (sim.machines, sim.device):
        result = doctest.testmod(module)
        assert result.failed == 0, f"{result.failed} docstring example(s) in {module.__name__} fail"


# -- reproducibility ------------------------------------------------------------------


@pytest.mark.parametrize("kind", DEVICE_KINDS)
def test_same_seed_gives_the_same_series(kind: str) -> None:
    first = series(Machine(kind, seed=7, anomaly=True), 300, dt=2.0)
    second = series(Machine(kind, seed=7, anomaly=True), 300, dt=2.0)
    assert first == second, (
        f"two {kind} machines with seed 7 diverged; all randomness must come from the "
        "machine's own seeded random.Random, never the global random module"
    )


@pytest.mark.parametrize("kind", DEVICE_KINDS)
def test_different_seeds_give_different_series(kind: str) -> None:
    assert series(Machine(kind, seed=1), 20) != series(Machine(kind, seed=2), 20), (
        f"seeds 1 and 2 gave the same {kind} readings: the seed is not used"
    )


def test_global_random_state_does_not_matter() -> None:
    import random

    random.seed(1)
    first = series(Machine("oven", seed=3), 50)
    random.seed(999)
    second = series(Machine("oven", seed=3), 50)
    assert first == second, "the oven's readings depend on the global random module"


# -- dynamics ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", DEVICE_KINDS)
def test_healthy_readings_stay_within_noise_and_drift_and_inside_limits(kind: str) -> None:
    machine = Machine(kind, seed=11)
    spec = kind_spec(kind)
    for _ in range(3000):
        for name, reading in machine.step(5.0).items():
            sensor = spec.sensor(name)
            target = machine.target(name)
            bound = CLIP_SIGMAS * (sensor.drift + sensor.noise) + 10**-sensor.decimals
            assert abs(reading.value - target) <= bound, (
                f"{kind} {name} read {reading.value} {reading.unit} at steady state; the target is "
                f"{target}, and drift + noise are clipped at 3 sigma, so it must stay within "
                f"±{bound:.3g}"
            )
            assert sensor.low is None or reading.value >= sensor.low, (
                f"healthy {kind} {name} read {reading.value}, below its low limit {sensor.low}: "
                "it would raise an alarm without any anomaly"
            )
            assert sensor.high is None or reading.value <= sensor.high, (
                f"healthy {kind} {name} read {reading.value}, above its high limit {sensor.high}"
            )
            assert reading.unit == sensor.unit


def test_setpoint_change_is_followed_with_first_order_lag() -> None:
    press = Machine("press", seed=5)
    spec = kind_spec("press").sensor("temperature")
    start = press.value("temperature")
    press.set_setpoint("temperature", 100.0)
    press.step(spec.tau)  # one time constant
    expected = start + (100.0 - start) * (1 - math.exp(-1))
    slack = 2 * CLIP_SIGMAS * spec.drift
    assert abs(press.value("temperature") - expected) <= slack, (
        f"after one time constant ({spec.tau} s) the press should have covered 63% of the way "
        f"from {start:.1f} to 100 C, i.e. be near {expected:.1f} C; it is at "
        f"{press.value('temperature'):.1f} C"
    )
    for _ in range(10):
        press.step(spec.tau)
    assert abs(press.value("temperature") - 100.0) <= CLIP_SIGMAS * spec.drift, (
        f"after 11 time constants the press should sit at its new setpoint 100 C (± drift), "
        f"not at {press.value('temperature'):.2f} C"
    )


def test_one_big_step_lands_where_many_small_steps_do() -> None:
    """The exact first-order update is stable at any time scale (no overshoot at dt >> tau)."""
    coarse, fine = Machine("conveyor", seed=2), Machine("conveyor", seed=2)
    for machine in (coarse, fine):
        machine.set_setpoint("speed", 2.5)
    coarse.step(600.0)
    for _ in range(600):
        fine.step(1.0)
    spec = kind_spec("conveyor").sensor("speed")
    for machine, label in ((coarse, "one 600 s step"), (fine, "600 steps of 1 s")):
        assert abs(machine.value("speed") - 2.5) <= CLIP_SIGMAS * spec.drift, (
            f"with {label} the conveyor speed should have settled at 2.5 m/s, "
            f"not {machine.value('speed'):.3f}"
        )


def test_stopped_machine_relaxes_to_idle_and_stops_producing() -> None:
    oven = Machine("oven", seed=4)
    series(oven, 60, dt=10.0)
    produced = oven.counters.produced
    assert produced == 120, f"an oven makes 12 trays/min: 10 plant minutes gave {produced}"
    oven.stop()
    series(oven, 200, dt=10.0)  # 2000 s, about 17 time constants
    spec = kind_spec("oven").sensor("temperature")
    assert abs(oven.value("temperature") - spec.idle) <= CLIP_SIGMAS * spec.drift, (
        f"a stopped oven cools to ambient ({spec.idle} C ± drift), not "
        f"{oven.value('temperature'):.1f} C"
    )
    assert oven.counters.produced == produced, "a stopped oven must not produce"


def test_environment_ignores_start_and_stop() -> None:
    station = Machine("environment", seed=1)
    running = station.target("temperature")
    station.stop()
    assert station.target("temperature") == running, (
        "the environment station measures the hall; stopping it must not change the hall's "
        "temperature"
    )


def test_coupled_sensor_follows_its_setpoint() -> None:
    conveyor = Machine("conveyor", seed=1)
    conveyor.set_setpoint("speed", 2.0)
    assert conveyor.target("motor_current") == pytest.approx(11.5), (
        "the conveyor's motor current target is 1.5 A + 5 A per m/s of belt speed"
    )


def test_negative_or_non_finite_dt_is_refused() -> None:
    machine = Machine("packer")
    for dt in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="dt must be"):
            machine.step(dt)


# -- state machine ------------------------------------------------------------------------


def test_state_machine_start_stop_fault_reset() -> None:
    press = Machine("press")
    assert press.state == RUNNING, "machines start running, like a plant at work"
    assert press.stop() is True and press.state == STOPPED
    assert press.stop() is False, "stopping a stopped machine changes nothing"
    assert press.start() is True and press.state == RUNNING
    press.set_setpoint("pressure", 180.0)
    assert press.fault() is True and press.state == FAULT
    with pytest.raises(TransitionRefused, match="reset"):
        press.start()
    assert press.stop() is False and press.state == FAULT, "stop does not clear a fault"
    assert press.reset() is True
    assert press.state == STOPPED, "reset acknowledges the fault and leaves the machine stopped"
    assert press.setpoints == kind_spec("press").default_setpoints(), (
        "reset restores the default setpoints"
    )


@pytest.mark.parametrize(
    ("kind", "name", "value", "match"),
    [
        ("oven", "speed", 1.0, "has no setpoint 'speed'; its setpoints are: temperature"),
        ("environment", "temperature", 20.0, "has no setpoints"),
        ("conveyor", "speed", 3.5, r"allowed range .*0\.\.3 m/s"),
    ],
)
def test_invalid_setpoint_is_refused(kind: str, name: str, value: float, match: str) -> None:
    machine = Machine(kind)
    before = dict(machine.setpoints)
    with pytest.raises(TransitionRefused, match=match):
        machine.set_setpoint(name, value)
    assert machine.setpoints == before


# -- anomalies ----------------------------------------------------------------------------


def _out_of_range(kind: str, readings: dict[str, float]) -> list[str]:
    spec = kind_spec(kind)
    return [
        name
        for name, value in readings.items()
        if (spec.sensor(name).low is not None and value < spec.sensor(name).low)
        or (spec.sensor(name).high is not None and value > spec.sensor(name).high)
    ]


@pytest.mark.parametrize("kind", DEVICE_KINDS)
@pytest.mark.parametrize("dt", [0.5, 7.0, 60.0])
def test_anomaly_excursions_are_seen_whatever_the_step(kind: str, dt: float) -> None:
    """Every excursion shows in at least one reading, even when a step is longer than it."""
    machine = Machine(kind, seed=3, anomaly=True)
    planned = []
    steps: list[tuple[float, float, list[str]]] = []
    while machine.plant_time < 3600:
        if machine.excursion is not None and machine.excursion not in planned:
            planned.append(machine.excursion)
        t0 = machine.plant_time
        readings = {n: r.value for n, r in machine.step(dt).items()}
        steps.append((t0, machine.plant_time, _out_of_range(kind, readings)))
    assert len(planned) >= 10, f"an hour with anomalies should hold many excursions: {planned}"
    for excursion in planned:
        if excursion.end > machine.plant_time:
            continue
        seen = [
            (t0, t1)
            for t0, t1, bad in steps
            if t0 < excursion.end and t1 >= excursion.start and excursion.sensor in bad
        ]
        assert seen, (
            f"{kind}: the excursion of {excursion.sensor} to {excursion.value} from plant time "
            f"{excursion.start:.1f} to {excursion.end:.1f} s never showed in a reading with "
            f"steps of {dt} s"
        )


def test_no_anomaly_no_excursion() -> None:
    machine = Machine("press", seed=3)
    for _ in range(720):
        readings = {n: r.value for n, r in machine.step(5.0).items()}
        assert not _out_of_range("press", readings), f"out of range without --anomaly: {readings}"


def test_anomaly_schedule_follows_the_seed() -> None:
    schedule = AnomalySchedule(first=10.0)
    first = Machine("robot_arm", seed=8, anomaly=True, schedule=schedule).excursion
    again = Machine("robot_arm", seed=8, anomaly=True, schedule=schedule).excursion
    assert first == again and first is not None and first.start == 10.0


# -- DeviceCore: the messages ----------------------------------------------------------------


def make_core(kind: str = "press", **kwargs: object) -> DeviceCore:
    return DeviceCore(f"{kind}-01", kind, Topics(ROOT), clock=lambda: NOW, **kwargs)


def check_contract(messages: list[Outgoing]) -> None:
    """Every message validates against its topic's schema and uses the contract's QoS/retain."""
    for message in messages:
        validate_message(message.topic, message.encode(), root=ROOT)
        kind = Topics(ROOT).kind_of(message.topic)
        assert message.retain == (kind in {"state", "status"}), (
            f"{message.topic}: only state and status are retained"
        )
        assert message.qos == (0 if kind == "telemetry" else 1), (
            f"{message.topic}: telemetry goes at QoS 0, everything else at QoS 1"
        )


def commands_topic(core: DeviceCore, publisher: str = "dashboard") -> str:
    return core.topics.command(publisher, core.device_id)


def test_tick_publishes_one_reading_per_sensor_with_a_shared_seq() -> None:
    core = make_core("conveyor")
    for seq in range(3):
        out = core.tick(1.0)
        check_contract(out)
        assert [m.payload["sensor"] for m in out] == ["speed", "motor_current"]
        assert {m.payload["seq"] for m in out} == {seq}, "seq counts rounds from 0, per sensor"
        assert out[0].payload["plant_time"] == pytest.approx(seq + 1.0)


def test_critical_alarm_trips_the_machine_and_republishes_state() -> None:
    core = make_core("oven", anomaly=True, schedule=AnomalySchedule(first=5.0))
    out = core.tick(10.0)
    check_contract(out)
    alarms = [m.payload for m in out if "/alarms/" in m.topic]
    states = [m.payload for m in out if "/state/" in m.topic]
    assert [a["state"] for a in alarms] == ["raised"], f"expected one raised alarm: {alarms}"
    assert alarms[0]["severity"] == "critical"
    assert states and states[-1]["state"] == "fault", (
        f"a critical alarm must trip the oven into fault and republish state; got {states}"
    )
    assert states[-1]["counters"]["alarms_raised"] == 1
    assert states[-1]["reason"].startswith("fault: ")


def test_accepted_command_republishes_state_with_reason() -> None:
    core = make_core("conveyor")
    out = core.handle(commands_topic(core), b'{"command": "stop", "reason": "manual"}')
    check_contract(out)
    assert len(out) == 1 and out[0].payload["state"] == "stopped"
    assert out[0].payload["reason"] == "manual"
    assert out[0].payload["counters"]["commands_accepted"] == 1
    out = core.handle(
        commands_topic(core, "controller"), b'{"command": "set", "setpoint": "speed", "value": 0.8}'
    )
    assert out[0].payload["setpoints"] == {"speed": 0.8}
    assert out[0].payload["reason"] == "set speed=0.8 from controller", (
        "without a reason, the state says what was done and who sent it (from the topic)"
    )


@pytest.mark.parametrize(
    ("payload", "retained", "why"),
    [
        (b"\xff\xfe", False, "not UTF-8"),
        (b'{"command": "launch"}', False, "unknown command"),
        (b'{"command": "start"}', True, "retained"),
    ],
)
def test_rejected_command_gives_error_event_and_counts(
    payload: bytes, retained: bool, why: str
) -> None:
    core = make_core("packer")
    out = core.handle(commands_topic(core), payload, retained=retained)
    check_contract(out)
    event, state = out[0].payload, out[1].payload
    assert out[0].topic == f"{ROOT}/events/packer-01"
    assert event["event"] == "command_rejected" and why in event["reason"], event
    assert event["received"] == payload.decode("utf-8", "replace")
    assert state["counters"]["commands_rejected"] == 1
    assert state["state"] == "running", "a rejected command must not change the machine"


def test_start_in_fault_is_refused_with_the_way_out() -> None:
    core = make_core("press")
    core.machine.fault()
    out = core.handle(commands_topic(core), b'{"command": "start", "command_id": "c-1"}')
    check_contract(out)
    assert "send 'reset'" in out[0].payload["reason"]
    assert out[0].payload["command_id"] == "c-1", "the event quotes the command_id it refuses"
    out = core.handle(commands_topic(core), b'{"command": "reset"}')
    assert out[0].payload["state"] == "stopped"


def test_received_is_truncated_to_200_characters() -> None:
    core = make_core("press")
    out = core.handle(commands_topic(core), b"x" * 1000)
    assert len(out[0].payload["received"]) == 200
    check_contract(out)


def test_status_and_will_follow_the_contract() -> None:
    core = make_core("robot_arm")
    topic, payload, qos, retain = core.will()
    assert (topic, qos, retain) == (f"{ROOT}/status/robot_arm-01", 1, True)
    check_contract([core.status("online", "connected"), core.status("offline", "shutdown")])
    assert validate_message(topic, payload, root=ROOT)["reason"] == "last-will"


def test_anomalies_start_within_seconds_and_differ_between_devices() -> None:
    """A newcomer who asks for anomalies sees one soon, and not on every device at once."""
    firsts = {
        kind: Machine(kind, seed=1, identity=f"{kind}-01", anomaly=True).excursion
        for kind in DEVICE_KINDS
    }
    starts = {kind: excursion.start for kind, excursion in firsts.items() if excursion}
    assert max(starts.values()) <= 10.0, f"first excursions (plant seconds): {starts}"
    assert len(set(starts.values())) == len(starts), f"devices share a first instant: {starts}"
    again = Machine("press", seed=1, identity="press-01", anomaly=True).excursion
    assert again == firsts["press"], "the same seed and device id give the same schedule"
    other = Machine("press", seed=1, identity="press-02", anomaly=True).excursion
    assert other != again, "two presses under one seed must not share their anomalies"
