"""Alarms with hysteresis: one "raised" and one "cleared" per excursion.

A naive alarm ("alarm whenever value > high") chatters: a noisy value sitting
near the limit crosses it on every other reading, and subscribers receive an
alarm storm. Hysteresis fixes that. An alarm is *raised* when a value leaves
``[low, high]``, and *cleared* only when the value is back inside by a margin,
``[low + hysteresis, high - hysteresis]``. Readings in between change nothing.

With a high limit of 90 C and 2 C of hysteresis, the readings 89, 91, 90, 89,
91, 89, 87.9, 89, 90.5 give exactly three changes: raised at 91, cleared at
87.9 (the first reading at or below 88) and raised again at 90.5.

Example::

    >>> monitor = AlarmMonitor("temperature", "C", low=None, high=90.0, hysteresis=2.0)
    >>> monitor.update(91.0).state
    'raised'
    >>> monitor.update(89.0) is None      # inside the limit, but not by 2 C yet
    True
    >>> monitor.update(87.5).state
    'cleared'
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

RAISED = "raised"
CLEARED = "cleared"
SEVERITIES = ("warning", "critical")


@dataclass(frozen=True)
class AlarmChange:
    """An alarm that was raised or cleared by the last reading.

    The fields are those of the alarm payload, minus ``ts`` and ``device_id``,
    which the device adds.
    """

    sensor: str
    state: str
    value: float
    low: float | None
    high: float | None
    severity: str
    message: str

    def as_payload(self) -> dict[str, object]:
        return {
            "sensor": self.sensor,
            "state": self.state,
            "value": self.value,
            "low": self.low,
            "high": self.high,
            "severity": self.severity,
            "message": self.message,
        }


class AlarmMonitor:
    """Watches one sensor and reports when its alarm is raised or cleared.

    :param low: lower normal limit, or None for no lower limit.
    :param high: upper normal limit, or None for no upper limit.
    :param hysteresis: how far inside the limits a value must return before the
        alarm clears; must leave a non-empty band between the two clear points.
    :param severity: ``"warning"`` or ``"critical"``, copied into every change.
    """

    def __init__(
        self,
        sensor: str,
        unit: str,
        *,
        low: float | None,
        high: float | None,
        hysteresis: float,
        severity: str = "warning",
    ) -> None:
        if not hysteresis >= 0:
            raise ValueError(f"hysteresis must be >= 0, not {hysteresis!r}")
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, not {severity!r}")
        if low is not None and high is not None and not low + hysteresis < high - hysteresis:
            raise ValueError(
                f"{sensor}: limits {low}..{high} with hysteresis {hysteresis} leave no band in "
                "which the alarm could clear"
            )
        self.sensor = sensor
        self.unit = unit
        self.low = low
        self.high = high
        self.hysteresis = hysteresis
        self.severity = severity
        self.active = False

    def out_of_range(self, value: float) -> bool:
        """Whether ``value`` is outside ``[low, high]`` (a NaN reading always is)."""
        if math.isnan(value):
            return True
        return (self.low is not None and value < self.low) or (
            self.high is not None and value > self.high
        )

    def back_inside(self, value: float) -> bool:
        """Whether ``value`` is inside the limits by at least the hysteresis margin."""
        if math.isnan(value):
            return False
        return (self.low is None or value >= self.low + self.hysteresis) and (
            self.high is None or value <= self.high - self.hysteresis
        )

    def update(self, value: float) -> AlarmChange | None:
        """Feed one reading; return the change it causes, if any."""
        if not self.active and self.out_of_range(value):
            self.active = True
            return self._change(RAISED, value, self._raised_message(value))
        if self.active and self.back_inside(value):
            self.active = False
            return self._change(CLEARED, value, self._cleared_message(value))
        return None

    def _change(self, state: str, value: float, message: str) -> AlarmChange:
        return AlarmChange(self.sensor, state, value, self.low, self.high, self.severity, message)

    def _raised_message(self, value: float) -> str:
        if math.isnan(value):
            return f"{self.sensor} reading is not a number"
        if self.high is not None and value > self.high:
            return f"{self.sensor} {value:g} {self.unit} is above the high limit {self.high:g}"
        return f"{self.sensor} {value:g} {self.unit} is below the low limit {self.low:g}"

    def _cleared_message(self, value: float) -> str:
        h = self.hysteresis
        if self.low is not None and self.high is not None:
            where = (
                f"between {self.low + h:g} and {self.high - h:g} "
                f"(limits {self.low:g}..{self.high:g}, hysteresis {h:g})"
            )
        elif self.high is not None:
            where = f"at or below {self.high - h:g} (high limit {self.high:g} - hysteresis {h:g})"
        else:
            assert self.low is not None
            where = f"at or above {self.low + h:g} (low limit {self.low:g} + hysteresis {h:g})"
        return f"{self.sensor} back to {value:g} {self.unit}, {where}"


class AlarmPanel:
    """The alarm monitors of every sensor of one machine."""

    def __init__(self, monitors: Iterable[AlarmMonitor]) -> None:
        self.monitors = {monitor.sensor: monitor for monitor in monitors}

    @classmethod
    def for_kind(cls, kind: str) -> AlarmPanel:
        """A panel with the limits of every sensor of ``kind`` (see :mod:`sim.machines`)."""
        from sim.machines import kind_spec

        return cls(
            AlarmMonitor(
                spec.name,
                spec.unit,
                low=spec.low,
                high=spec.high,
                hysteresis=spec.hysteresis,
                severity=spec.severity,
            )
            for spec in kind_spec(kind).sensors
            if spec.low is not None or spec.high is not None
        )

    def update(self, values: Mapping[str, float]) -> list[AlarmChange]:
        """Feed one reading per sensor; return the changes, in sensor order."""
        changes = []
        for sensor, value in values.items():
            monitor = self.monitors.get(sensor)
            if monitor is not None:
                change = monitor.update(value)
                if change is not None:
                    changes.append(change)
        return changes

    @property
    def active(self) -> list[str]:
        """Sensors whose alarm is raised now."""
        return [name for name, monitor in self.monitors.items() if monitor.active]
