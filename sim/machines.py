"""Machine models: sensors, plausible dynamics and a small state machine.

Nothing here touches the network. A :class:`Machine` is advanced by calling
:meth:`Machine.step` with a number of *plant* seconds; it returns one reading
per sensor. The same seed and the same sequence of steps always give the same
readings, which is what lets a lesson say "with ``--seed 7`` the press reads
65.12 C" and lets tests run an hour of plant time in a millisecond.

Each sensor's true value follows its target with first-order lag (time
constant ``tau``); the target is a setpoint while the machine runs and an idle
value (ambient temperature, zero speed...) while it is stopped or in fault. A
slow, bounded drift wanders around the target and every reading carries
bounded measurement noise. In ``anomaly`` mode the machine now and then forces
one sensor out of its normal range for a while (an *excursion*), on a schedule
drawn from the seed, so alarms are reproducible too.

Every sensor's normal range contains its idle value, so a stopped machine never
alarms by cooling down; only a machine pushed outside its band does.

Example::

    >>> press = Machine("press", seed=1)
    >>> readings = press.step(1.0)
    >>> sorted(readings)
    ['pressure', 'temperature']
    >>> readings["temperature"].unit
    'C'
    >>> press.stop()
    True
    >>> press.state
    'stopped'
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

RUNNING = "running"
STOPPED = "stopped"
FAULT = "fault"
STATES = (RUNNING, STOPPED, FAULT)

# Noise and drift are clipped at this many standard deviations, so readings are
# bounded: a test can state the exact band a healthy sensor stays in.
CLIP_SIGMAS = 3.0


@dataclass(frozen=True)
class SetpointSpec:
    """A value an operator may change with a ``set`` command.

    The allowed range is wider than the sensors' normal range on purpose: an
    operator may drive a machine into alarm (that is a lesson), but not into
    physically absurd values.
    """

    name: str
    unit: str
    default: float
    minimum: float
    maximum: float

    def check(self, value: float) -> str | None:
        """Why ``value`` is not acceptable, or None when it is."""
        if not self.minimum <= value <= self.maximum:
            return (
                f"value {value:g} is outside the allowed range of setpoint {self.name!r}: "
                f"{self.minimum:g}..{self.maximum:g} {self.unit}"
            )
        return None


@dataclass(frozen=True)
class SensorSpec:
    """One sensor: what it measures, how it moves and where it is normal.

    :param target: running target as a function of the current setpoints.
    :param idle: value the sensor relaxes to when the machine does not run;
        None means "keep following the running target" (the environment does
        not care whether it is "running").
    :param tau: first-order time constant, plant seconds.
    :param noise: standard deviation of measurement noise (clipped at 3 sigma).
    :param drift: standard deviation of the slow drift of the true value
        (clipped at 3 sigma); its correlation time is ``drift_tau``.
    :param low: lower normal limit, or None when there is none.
    :param high: upper normal limit, or None when there is none.
    :param hysteresis: how far back inside the limits a value must come before
        an alarm clears.
    :param severity: ``"warning"``, or ``"critical"``, which faults the machine.
    """

    name: str
    unit: str
    target: Callable[[Mapping[str, float]], float]
    idle: float | None
    tau: float
    noise: float
    drift: float
    low: float | None
    high: float | None
    hysteresis: float
    severity: str = "warning"
    decimals: int = 2
    drift_tau: float = 300.0


@dataclass(frozen=True)
class KindSpec:
    """A kind of machine: its sensors, its setpoints and its output."""

    kind: str
    description: str
    sensors: tuple[SensorSpec, ...]
    setpoints: tuple[SetpointSpec, ...]
    #: parts made per plant minute while running, from the current setpoints
    production_per_minute: Callable[[Mapping[str, float]], float]

    def sensor(self, name: str) -> SensorSpec:
        for spec in self.sensors:
            if spec.name == name:
                return spec
        raise KeyError(f"{self.kind} has no sensor {name!r}")

    def setpoint(self, name: str) -> SetpointSpec | None:
        for spec in self.setpoints:
            if spec.name == name:
                return spec
        return None

    def default_setpoints(self) -> dict[str, float]:
        return {spec.name: spec.default for spec in self.setpoints}


def _fixed(value: float) -> Callable[[Mapping[str, float]], float]:
    return lambda setpoints: value


def _setpoint(name: str) -> Callable[[Mapping[str, float]], float]:
    return lambda setpoints: setpoints[name]


AMBIENT_C = 22.0

KIND_SPECS: dict[str, KindSpec] = {
    spec.kind: spec
    for spec in (
        KindSpec(
            kind="press",
            description="hydraulic press: heated platens under pressure",
            sensors=(
                SensorSpec(
                    "temperature",
                    "C",
                    _setpoint("temperature"),
                    AMBIENT_C,
                    tau=40.0,
                    noise=0.3,
                    drift=1.0,
                    low=None,
                    high=90.0,
                    hysteresis=2.0,
                ),
                SensorSpec(
                    "pressure",
                    "bar",
                    _setpoint("pressure"),
                    1.0,
                    tau=5.0,
                    noise=1.5,
                    drift=3.0,
                    low=None,
                    high=200.0,
                    hysteresis=5.0,
                    severity="critical",
                    decimals=1,
                ),
            ),
            setpoints=(
                SetpointSpec("temperature", "C", 65.0, 20.0, 120.0),
                SetpointSpec("pressure", "bar", 150.0, 0.0, 250.0),
            ),
            production_per_minute=_fixed(30.0),
        ),
        KindSpec(
            kind="conveyor",
            description="belt conveyor: the motor current follows the belt speed",
            sensors=(
                SensorSpec(
                    "speed",
                    "m/s",
                    _setpoint("speed"),
                    0.0,
                    tau=3.0,
                    noise=0.01,
                    drift=0.02,
                    low=None,
                    high=2.0,
                    hysteresis=0.05,
                    decimals=3,
                ),
                SensorSpec(
                    "motor_current",
                    "A",
                    lambda sp: 1.5 + 5.0 * sp["speed"],
                    0.0,
                    tau=3.0,
                    noise=0.1,
                    drift=0.2,
                    low=None,
                    high=15.0,
                    hysteresis=0.5,
                ),
            ),
            setpoints=(SetpointSpec("speed", "m/s", 1.2, 0.0, 3.0),),
            production_per_minute=lambda sp: 40.0 * sp["speed"],
        ),
        KindSpec(
            kind="robot_arm",
            description="pick-and-place robot: faster cycles heat the joints",
            sensors=(
                SensorSpec(
                    "joint_temp",
                    "C",
                    lambda sp: 30.0 + 60.0 / sp["cycle_time"],
                    AMBIENT_C,
                    tau=60.0,
                    noise=0.2,
                    drift=0.5,
                    low=None,
                    high=70.0,
                    hysteresis=2.0,
                ),
                SensorSpec(
                    "cycle_time",
                    "s",
                    _setpoint("cycle_time"),
                    None,
                    tau=10.0,
                    noise=0.05,
                    drift=0.1,
                    low=2.0,
                    high=8.0,
                    hysteresis=0.2,
                    decimals=3,
                ),
            ),
            setpoints=(SetpointSpec("cycle_time", "s", 4.0, 1.0, 20.0),),
            production_per_minute=lambda sp: 60.0 / sp["cycle_time"],
        ),
        KindSpec(
            kind="oven",
            description="tunnel oven: slow to heat, slow to cool",
            sensors=(
                SensorSpec(
                    "temperature",
                    "C",
                    _setpoint("temperature"),
                    AMBIENT_C,
                    tau=120.0,
                    noise=0.5,
                    drift=1.5,
                    low=None,
                    high=220.0,
                    hysteresis=3.0,
                    severity="critical",
                    decimals=1,
                ),
            ),
            setpoints=(SetpointSpec("temperature", "C", 180.0, 20.0, 300.0),),
            production_per_minute=_fixed(12.0),
        ),
        KindSpec(
            kind="packer",
            description="packing machine",
            sensors=(
                SensorSpec(
                    "rate",
                    "packs/min",
                    _setpoint("rate"),
                    0.0,
                    tau=5.0,
                    noise=0.8,
                    drift=1.5,
                    low=None,
                    high=90.0,
                    hysteresis=3.0,
                    decimals=1,
                ),
            ),
            setpoints=(SetpointSpec("rate", "packs/min", 60.0, 0.0, 150.0),),
            production_per_minute=lambda sp: sp["rate"],
        ),
        KindSpec(
            kind="environment",
            description="environment station on the shop floor (no setpoints)",
            sensors=(
                SensorSpec(
                    "temperature",
                    "C",
                    _fixed(AMBIENT_C),
                    None,
                    tau=600.0,
                    noise=0.1,
                    drift=1.5,
                    low=15.0,
                    high=30.0,
                    hysteresis=1.0,
                    drift_tau=1800.0,
                ),
                SensorSpec(
                    "humidity",
                    "%",
                    _fixed(45.0),
                    None,
                    tau=600.0,
                    noise=0.5,
                    drift=3.0,
                    low=30.0,
                    high=60.0,
                    hysteresis=2.0,
                    decimals=1,
                    drift_tau=1800.0,
                ),
            ),
            setpoints=(),
            production_per_minute=_fixed(0.0),
        ),
    )
}
DEVICE_KINDS = tuple(KIND_SPECS)


def kind_spec(kind: str) -> KindSpec:
    """The spec of ``kind``, or a ValueError that lists the kinds there are."""
    try:
        return KIND_SPECS[kind]
    except KeyError:
        choices = ", ".join(DEVICE_KINDS)
        raise ValueError(f"unknown device kind {kind!r}; choose one of {choices}") from None


@dataclass(frozen=True)
class Reading:
    """One sensor reading, rounded as it is published."""

    sensor: str
    value: float
    unit: str


@dataclass
class Counters:
    """What a device counts over its life (``reset`` does not zero them)."""

    produced: int = 0
    alarms_raised: int = 0
    commands_accepted: int = 0
    commands_rejected: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "produced": self.produced,
            "alarms_raised": self.alarms_raised,
            "commands_accepted": self.commands_accepted,
            "commands_rejected": self.commands_rejected,
        }


@dataclass(frozen=True)
class Excursion:
    """A window of plant time in which one sensor is forced out of range."""

    sensor: str
    start: float
    end: float
    value: float


@dataclass(frozen=True)
class AnomalySchedule:
    """When excursions happen, in plant seconds (gaps and durations are drawn from the seed)."""

    #: plant seconds until the first excursion: a number, or a ``(low, high)`` range drawn
    #: from the machine's own random stream, so devices started together differ
    first: float | tuple[float, float] = (3.0, 9.0)
    gap: tuple[float, float] = (60.0, 180.0)
    duration: tuple[float, float] = (10.0, 30.0)
    #: how far outside the limit an excursion goes, as a fraction of the
    #: distance between the limit and the sensor's default target
    overshoot: float = 0.25


class TransitionRefused(Exception):
    """A command the machine cannot obey in its current state; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _SensorState:
    spec: SensorSpec
    value: float
    drift: float = 0.0
    rng: random.Random = field(default_factory=random.Random)


class Machine:
    """A simulated machine of one kind.

    :param kind: one of :data:`DEVICE_KINDS`.
    :param seed: seeds every random choice; each sensor (and the anomaly
        schedule) draws from its own ``random.Random`` derived from
        ``(seed, identity, sensor)``, so adding a sensor does not change the others.
    :param identity: what makes this machine's random streams its own (a device
        passes its id, so that six devices under one ``--seed`` do not raise
        their alarms in the same instant); default: the kind.
    :param anomaly: inject excursions following ``schedule``.
    :param state: initial state (machines start running, like a plant at work).

    The machine starts in steady state: each sensor at its running target.
    """

    def __init__(
        self,
        kind: str,
        *,
        seed: int = 1,
        identity: str | None = None,
        anomaly: bool = False,
        schedule: AnomalySchedule | None = None,
        state: str = RUNNING,
    ) -> None:
        if state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}, not {state!r}")
        self.spec = kind_spec(kind)
        self.kind = kind
        self.seed = seed
        self.state = state
        self.setpoints = self.spec.default_setpoints()
        self.plant_time = 0.0
        self.counters = Counters()
        self.anomaly = anomaly
        self.schedule = schedule or AnomalySchedule()
        self._produced = 0.0
        stream = f"{seed}/{identity or kind}"
        self._sensors = {
            spec.name: _SensorState(
                spec, self._target(spec), rng=random.Random(f"{stream}/{spec.name}")
            )
            for spec in self.spec.sensors
        }
        self._anomaly_rng = random.Random(f"{stream}/anomaly")
        first = self.schedule.first
        if isinstance(first, tuple):
            first = self._anomaly_rng.uniform(*first)
        self.excursion: Excursion | None = self._plan_excursion(first) if anomaly else None

    # -- what the machine is ------------------------------------------------
    @property
    def sensors(self) -> tuple[str, ...]:
        return tuple(self._sensors)

    def value(self, sensor: str) -> float:
        """The true (noise-free) value of ``sensor`` now."""
        return self._sensors[sensor].value

    def target(self, sensor: str) -> float:
        """Where ``sensor`` is heading in the current state, before drift."""
        return self._target(self._sensors[sensor].spec)

    def _target(self, spec: SensorSpec) -> float:
        if self.state == RUNNING or spec.idle is None:
            return spec.target(self.setpoints)
        return spec.idle

    # -- dynamics -----------------------------------------------------------
    def step(self, dt: float) -> dict[str, Reading]:
        """Advance ``dt`` plant seconds and return one reading per sensor.

        The update is the exact solution of first-order lag over ``dt``, so a
        large step (a high time scale) is as stable as many small ones.
        """
        if not (dt >= 0 and math.isfinite(dt)):
            raise ValueError(f"dt must be a finite number of plant seconds >= 0, not {dt!r}")
        t0, t1 = self.plant_time, self.plant_time + dt
        excursion = self._excursion_between(t0, t1)
        readings: dict[str, Reading] = {}
        for name, sensor in self._sensors.items():
            spec = sensor.spec
            rng = sensor.rng
            if spec.drift > 0:
                keep = math.exp(-dt / spec.drift_tau)
                shock = _clipped_gauss(rng) * spec.drift * math.sqrt(1.0 - keep * keep)
                sensor.drift = _clip(sensor.drift * keep + shock, CLIP_SIGMAS * spec.drift)
            target = self._target(spec) + sensor.drift
            sensor.value = target + (sensor.value - target) * math.exp(-dt / spec.tau)
            if excursion is not None and excursion.sensor == name:
                sensor.value = excursion.value
            measured = sensor.value + _clipped_gauss(rng) * spec.noise
            readings[name] = Reading(name, round(measured, spec.decimals), spec.unit)
        if self.state == RUNNING:
            self._produced += self.spec.production_per_minute(self.setpoints) * dt / 60.0
            self.counters.produced = int(self._produced)
        self.plant_time = t1
        return readings

    def _excursion_between(self, t0: float, t1: float) -> Excursion | None:
        """The excursion overlapping (t0, t1], planning the next one once it ends."""
        excursion = self.excursion
        if excursion is None or excursion.start > t1:
            return None
        if excursion.end <= t1:
            gap = self._anomaly_rng.uniform(*self.schedule.gap)
            self.excursion = self._plan_excursion(excursion.end + gap)
        return excursion

    def _plan_excursion(self, start: float) -> Excursion:
        rng = self._anomaly_rng
        spec = rng.choice(self.spec.sensors)
        duration = rng.uniform(*self.schedule.duration)
        sides = [side for side in ("low", "high") if getattr(spec, side) is not None]
        side = rng.choice(sides)
        nominal = spec.target(self.spec.default_setpoints())
        limit = getattr(spec, side)
        distance = max(abs(limit - nominal), 10 * spec.noise) * self.schedule.overshoot
        value = limit + distance if side == "high" else limit - distance
        return Excursion(spec.name, start, start + duration, value)

    # -- state machine --------------------------------------------------------
    def start(self) -> bool:
        """Run. Returns whether the state changed.

        :raises TransitionRefused: in fault; a fault must be acknowledged with reset.
        """
        if self.state == FAULT:
            raise TransitionRefused(f"{self.kind} is in fault; send 'reset' before 'start'")
        return self._enter(RUNNING)

    def stop(self) -> bool:
        """Stop producing (a machine in fault stays in fault)."""
        if self.state == FAULT:
            return False
        return self._enter(STOPPED)

    def reset(self) -> bool:
        """Acknowledge a fault: leave the machine stopped with default setpoints."""
        defaults = self.spec.default_setpoints()
        changed = self.setpoints != defaults or self.state != STOPPED
        self.setpoints = defaults
        self.state = STOPPED
        return changed

    def fault(self) -> bool:
        """Trip: stop producing until someone resets the machine."""
        return self._enter(FAULT)

    def set_setpoint(self, name: str, value: float) -> bool:
        """Change a setpoint. Returns whether it changed.

        :raises TransitionRefused: unknown setpoint or value out of range.
        """
        spec = self.spec.setpoint(name)
        if spec is None:
            raise TransitionRefused(unknown_setpoint_reason(self.kind, name))
        problem = spec.check(value)
        if problem:
            raise TransitionRefused(problem)
        changed = self.setpoints[name] != value
        self.setpoints[name] = float(value)
        return changed

    def _enter(self, state: str) -> bool:
        changed = self.state != state
        self.state = state
        return changed


def unknown_setpoint_reason(kind: str, name: str) -> str:
    """The explanation for a ``set`` on a setpoint that ``kind`` does not have."""
    names = [spec.name for spec in kind_spec(kind).setpoints]
    article = "an" if kind[0] in "aeiou" else "a"
    if not names:
        return f"{article} {kind} has no setpoints, so it cannot 'set' {name!r}"
    return f"{article} {kind} has no setpoint {name!r}; its setpoints are: {', '.join(names)}"


def _clipped_gauss(rng: random.Random) -> float:
    return _clip(rng.gauss(0.0, 1.0), CLIP_SIGMAS)


def _clip(value: float, bound: float) -> float:
    return max(-bound, min(bound, value))
