"""The line's eight steps and their machines, and the topic/QoS policy of the seed.

Each step has named machines (a batch goes to one of them), sensors with a
nominal value per recipe, the alarm it may raise, the quality check made after
it (if it is a QC point), and its nominal yield: the share of the mass that
goes on, the rest being a *declared* process loss (moisture and shells when
roasting, trim when molding...). A mass balance compares what went in with what
came out plus the declared losses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sim.chocolate.recipes import STEPS, Recipe

#: QoS per message type, exactly the seed's policy
QOS = {"telemetry": 0, "state": 1, "alarm": 1, "quality": 1, "batch": 1}
#: message types the broker keeps for late subscribers
RETAINED = frozenset({"state"})
MESSAGE_TYPES = tuple(QOS)


@dataclass(frozen=True)
class Sensor:
    """A reading of a machine: nominal value for a recipe (and phase 0..1 of the step), noise."""

    name: str
    unit: str
    nominal: Callable[[Recipe, float], float]
    noise: float


@dataclass(frozen=True)
class QualityCheck:
    """A measurement at a QC point; outside [low, high] fails."""

    check: str
    unit: str
    low: float | None
    high: float | None
    nominal: float
    failing: float
    #: what a failure leads to (a second failure always scraps)
    on_fail: str = "rework"
    #: spread of a passing measurement around ``nominal`` (0 for counts)
    noise: float = 0.05


@dataclass(frozen=True)
class Step:
    name: str
    machines: tuple[str, ...]
    minutes: float
    sensors: tuple[Sensor, ...]
    alarm: tuple[str, str, float, str]  # alarm name, sensor, excursion value, severity
    nominal_yield: float
    quality: tuple[QualityCheck, ...] = ()

    def duration(self, recipe: Recipe) -> float:
        """Plant seconds this step takes for ``recipe``."""
        return 60.0 * (recipe.conche_minutes if self.name == "s4_conching" else self.minutes)


def _tempering(recipe: Recipe, phase: float) -> float:
    curve = recipe.tempering
    if phase < 0.3:
        return curve.melt_c
    if phase < 0.55:
        return curve.cool_c
    return curve.work_c


def _const(value: float) -> Callable[[Recipe, float], float]:
    return lambda recipe, phase: value


PLANT: dict[str, Step] = {
    step.name: step
    for step in (
        Step(
            "s1_roasting",
            ("roaster-01", "roaster-02"),
            30,
            (
                Sensor("temperature", "C", lambda r, p: r.roast_c * min(1.0, 0.6 + p), 1.5),
                Sensor("drum_speed", "rpm", _const(12.0), 0.3),
            ),
            ("over_temperature", "temperature", 158.0, "critical"),
            0.82,
        ),
        Step(
            "s2_grinding",
            ("grinder-01",),
            45,
            (
                Sensor("temperature", "C", _const(65.0), 1.0),
                Sensor("motor_load", "%", _const(72.0), 3.0),
            ),
            ("motor_overload", "motor_load", 112.0, "warning"),
            0.985,
        ),
        Step(
            "s3_refining",
            ("refiner-01", "refiner-02"),
            90,
            (
                Sensor("temperature", "C", _const(45.0), 1.0),
                Sensor("roll_gap", "um", _const(18.0), 0.8),
            ),
            ("roll_gap_drift", "roll_gap", 31.0, "warning"),
            0.99,
            (QualityCheck("particle_size", "um", None, 25.0, 19.0, 29.0),),
        ),
        Step(
            "s4_conching",
            ("conche-01", "conche-02"),
            360,
            (
                Sensor("temperature", "C", lambda r, p: r.conche_c, 1.5),
                Sensor("motor_load", "%", _const(80.0), 4.0),
            ),
            ("motor_overload", "motor_load", 118.0, "warning"),
            0.99,
        ),
        Step(
            "s5_tempering",
            ("temper-01",),
            30,
            (
                Sensor("temperature", "C", _tempering, 0.2),
                Sensor("flow", "kg/h", _const(820.0), 15.0),
            ),
            ("temper_out_of_range", "temperature", 34.5, "critical"),
            0.995,
            (QualityCheck("temper_index", "CTU", 4.0, 6.0, 5.0, 7.2),),
        ),
        Step(
            "s6_molding",
            ("molder-01",),
            30,
            (
                Sensor("mold_temperature", "C", _const(26.0), 0.4),
                Sensor("fill_weight", "g", _const(100.5), 0.3),
            ),
            ("fill_weight_low", "fill_weight", 96.0, "warning"),
            0.99,
        ),
        Step(
            "s7_cooling",
            ("cooler-01",),
            25,
            (
                Sensor("tunnel_temperature", "C", _const(13.0), 0.5),
                Sensor("humidity", "%", _const(50.0), 2.0),
            ),
            ("humidity_high", "humidity", 68.0, "warning"),
            0.998,
        ),
        Step(
            "s8_packaging",
            ("packer-01", "packer-02", "packer-03"),
            30,
            (
                Sensor("packs_per_minute", "1/min", _const(120.0), 3.0),
                Sensor("reject_rate", "%", _const(0.4), 0.1),
            ),
            ("reject_rate_high", "reject_rate", 3.5, "warning"),
            0.995,
            (
                QualityCheck("net_weight", "g", 99.0, 102.0, 100.4, 98.1),
                QualityCheck(
                    "metal_detection", "detections", None, 0.0, 0.0, 1.0, "scrap", noise=0.0
                ),
            ),
        ),
    )
}
assert tuple(PLANT) == STEPS
MACHINES: dict[str, str] = {m: step.name for step in PLANT.values() for m in step.machines}


@dataclass(frozen=True)
class ChocolateTopics:
    """Topics of the namespace ``<root>/<site>/<line>/<step>/<machine>/<message_type>``.

    >>> ChocolateTopics("factory", "tunis-01", "line-a").topic("s5_tempering", "temper-01", "state")
    'factory/tunis-01/line-a/s5_tempering/temper-01/state'
    """

    root: str = "factory"
    site: str = "tunis-01"
    line: str = "line-a"

    def topic(self, step: str, machine: str, message_type: str) -> str:
        return f"{self.root}/{self.site}/{self.line}/{step}/{machine}/{message_type}"

    def all(self) -> str:
        """The filter for every message of this line."""
        return f"{self.root}/{self.site}/{self.line}/+/+/+"
