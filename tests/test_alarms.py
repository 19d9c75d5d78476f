"""Alarm hysteresis: exactly one ``raised`` and one ``cleared`` per excursion.

A subscriber (the controller, an operator's phone) must not be flooded when a
noisy value hovers at a limit. These tests feed :class:`sim.alarms.AlarmMonitor`
hand-written sequences, seeded noisy signals and, with hypothesis, arbitrary
ones.
"""

from __future__ import annotations

import doctest
import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sim.alarms
from mqtt_factory_lab.contract import validate
from sim.alarms import CLEARED, RAISED, AlarmMonitor, AlarmPanel
from sim.machines import DEVICE_KINDS, kind_spec


def states(monitor: AlarmMonitor, values: list[float]) -> list[tuple[str, float]]:
    """The (state, value) of every change the values cause."""
    return [(c.state, c.value) for v in values if (c := monitor.update(v)) is not None]


def high_monitor() -> AlarmMonitor:
    return AlarmMonitor("temperature", "C", low=None, high=90.0, hysteresis=2.0)


def test_module_examples_still_run() -> None:
    assert doctest.testmod(sim.alarms).failed == 0


def test_documented_sequence() -> None:
    values = [89, 91, 90, 89, 91, 89, 87.9, 89, 90.5]
    assert states(high_monitor(), values) == [(RAISED, 91), (CLEARED, 87.9), (RAISED, 90.5)], (
        "with high 90 and hysteresis 2: raise above 90, clear only at or below 88"
    )


def test_value_exactly_at_the_limit_is_normal() -> None:
    assert states(high_monitor(), [90.0]) == [], "the normal range [low, high] includes its ends"


def test_clear_exactly_at_the_hysteresis_boundary() -> None:
    assert states(high_monitor(), [95.0, 88.0]) == [(RAISED, 95.0), (CLEARED, 88.0)]


def test_low_limit_mirrors_the_high_one() -> None:
    monitor = AlarmMonitor("humidity", "%", low=30.0, high=60.0, hysteresis=2.0)
    assert states(monitor, [29.0, 31.0, 30.5, 32.0]) == [(RAISED, 29.0), (CLEARED, 32.0)]


def test_jumping_across_the_band_while_raised_raises_nothing_new() -> None:
    monitor = AlarmMonitor("humidity", "%", low=30.0, high=60.0, hysteresis=2.0)
    assert states(monitor, [65.0, 20.0, 65.0, 45.0]) == [(RAISED, 65.0), (CLEARED, 45.0)], (
        "one excursion, even from one side to the other, is one alarm"
    )


def test_nan_reading_raises() -> None:
    monitor = high_monitor()
    change = monitor.update(math.nan)
    assert change is not None and change.state == RAISED and "not a number" in change.message
    assert monitor.update(math.nan) is None


def test_noisy_signal_at_the_limit_gives_no_alarm_storm() -> None:
    """A value wobbling ±1 C around 90 C crosses the limit ~100 times: still one alarm."""
    rng = random.Random(42)
    monitor = high_monitor()
    wobble = [90.0 + rng.uniform(-1.0, 1.0) for _ in range(200)]
    crossings = sum(1 for a, b in itertools.pairwise(wobble) if (a > 90) != (b > 90))
    back = [85.0 + rng.uniform(-1.0, 1.0) for _ in range(50)]
    changes = states(monitor, wobble + back)
    assert crossings > 50, "the test signal should cross the limit often"
    assert [state for state, _ in changes] == [RAISED, CLEARED], (
        f"the signal crossed 90 C {crossings} times; hysteresis must turn that into one raised "
        f"and one cleared alarm, got {len(changes)} changes: {changes[:6]}"
    )


@pytest.mark.parametrize(
    ("low", "high", "hysteresis"), [(10.0, 20.0, 5.0), (10.0, 20.0, 6.0), (0.0, 1.0, -0.1)]
)
def test_settings_without_a_clear_band_are_refused(low: float, high: float, hysteresis: float):
    with pytest.raises(ValueError):
        AlarmMonitor("x", "u", low=low, high=high, hysteresis=hysteresis)


@pytest.mark.parametrize("kind", DEVICE_KINDS)
def test_panel_watches_every_sensor_with_its_limits(kind: str) -> None:
    panel = AlarmPanel.for_kind(kind)
    spec = kind_spec(kind)
    assert set(panel.monitors) == {s.name for s in spec.sensors}
    for sensor in spec.sensors:
        monitor = panel.monitors[sensor.name]
        assert (monitor.low, monitor.high, monitor.severity) == (
            sensor.low,
            sensor.high,
            sensor.severity,
        )


def test_alarm_payload_follows_the_contract() -> None:
    panel = AlarmPanel.for_kind("environment")
    changes = panel.update({"temperature": 35.0, "humidity": 20.0})
    assert [(c.sensor, c.state) for c in changes] == [("temperature", RAISED), ("humidity", RAISED)]
    assert panel.active == ["temperature", "humidity"]
    for change in changes:
        payload = {"ts": 1767225600.0, "device_id": "env-hall-a", **change.as_payload()}
        validate("alarm", payload)
    cleared = panel.update({"temperature": 22.0, "humidity": 45.0})
    assert [c.state for c in cleared] == [CLEARED, CLEARED]
    assert "between 16 and 29" in cleared[0].message, cleared[0].message
    assert panel.active == []


limits = st.tuples(
    st.one_of(st.none(), st.floats(-100, 0)),
    st.one_of(st.none(), st.floats(10, 100)),
    st.floats(0, 4.9),
)


@settings(derandomize=True, database=None)  # the same examples on every run
@given(limits, st.lists(st.floats(-200, 200), max_size=60))
def test_changes_alternate_and_respect_the_bands(
    settings: tuple[float | None, float | None, float], values: list[float]
) -> None:
    """Whatever the values: raised, cleared, raised... each at a value that justifies it."""
    low, high, hysteresis = settings
    monitor = AlarmMonitor("s", "u", low=low, high=high, hysteresis=hysteresis)
    changes = [c for v in values if (c := monitor.update(v)) is not None]
    expected = [RAISED, CLEARED] * len(changes)
    assert [c.state for c in changes] == expected[: len(changes)]
    for change in changes:
        if change.state == RAISED:
            assert monitor.out_of_range(change.value)
        else:
            assert monitor.back_inside(change.value)
    assert monitor.active == (bool(changes) and changes[-1].state == RAISED)
