"""Every message of a production run, decided without a network: :class:`LineCore`.

:meth:`LineCore.run` yields :class:`Outgoing` messages in plant-time order; the
runner (:mod:`sim.chocolate.runner`) only paces and publishes them. A batch:

1. ``batch_started`` at the first machine of its route;
2. at every step: state ``running``, ``step_started`` (the lots consumed:
   the previous step's output plus the raw materials this step adds),
   telemetry, now and then an alarm raised and cleared, ``step_completed``
   (the lots produced, the quantity out and the declared process loss), the
   QC results if the step is a QC point, state ``idle``;
   (every batch sees at least one alarm, at a step the seed picks);
3. a failed QC check means ``rework`` (the step runs again on its own output,
   attempt 2) or, the second time or for metal, ``scrapped``: the batch ends;
4. after packaging, the finished lots leave in shipments (``shipped``).

Everything random comes from one :class:`random.Random` seeded with ``seed``,
so a run's contents depend only on the seed and the options; ``ts`` (wall
clock) and the run id in ``msg_id``, batch ids and lot codes make separate runs
distinct. Now and then a step loses a little mass it does not declare (a
spill): the data center's mass balance should flag that batch.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sim.chocolate.lots import MaterialStore
from sim.chocolate.plant import PLANT, QOS, RETAINED, ChocolateTopics, QualityCheck
from sim.chocolate.recipes import PRODUCT_OF_STEP, RECIPES, Recipe

DESTINATIONS = (
    "Tunis distribution centre",
    "Sfax distribution centre",
    "Sousse wholesale market",
    "Export: Marseille port",
)
PALLET_KG = 250.0


@dataclass(frozen=True)
class Outgoing:
    """One message a machine publishes, at a moment of plant time."""

    machine: str
    step: str
    message_type: str
    topic: str
    payload: dict[str, Any]
    plant_time: float

    @property
    def qos(self) -> int:
        return QOS[self.message_type]

    @property
    def retain(self) -> bool:
        return self.message_type in RETAINED

    def encode(self) -> bytes:
        return json.dumps(self.payload, allow_nan=False, separators=(",", ":")).encode()


@dataclass
class _Batch:
    batch_id: str
    recipe: Recipe
    machines: dict[str, str]
    #: the step where this batch surely sees an alarm (others: now and then)
    alarm_step: str = ""


class LineCore:
    """The chocolate line's decisions.

    :param topics: the namespace (root, site, line).
    :param seed: seeds every random choice.
    :param run_id: makes msg_ids, batch ids and lot codes unique to this run.
    :param recipes: the recipes made, in turn (the seed picks the first).
    :param batch_kg: planned mass of finished chocolate per batch.
    :param batch_schema: write batch events in version 2 (default) or 1.
    :param clock: wall clock for ``ts``.

    >>> core = LineCore(ChocolateTopics(), seed=3, run_id="r1", clock=lambda: 1767225600.0)
    >>> first = next(core.run(1))
    >>> first.message_type, first.payload["event"], first.payload["batch_id"]
    ('batch', 'batch_started', 'B-r1-0001')
    """

    def __init__(
        self,
        topics: ChocolateTopics,
        *,
        seed: int = 1,
        run_id: str = "r1",
        recipes: Sequence[str] = ("dark", "milk", "white"),
        batch_kg: float = 500.0,
        batch_schema: int = 2,
        readings_per_step: int = 6,
        alarm_rate: float = 0.05,
        fail_rate: float = 0.1,
        spill_rate: float = 0.008,
        clock: Callable[[], float] = time.time,
    ) -> None:
        unknown = [r for r in recipes if r not in RECIPES]
        if unknown or not recipes:
            raise ValueError(f"unknown recipe(s) {unknown}; choose from {', '.join(RECIPES)}")
        if batch_schema not in (1, 2):
            raise ValueError(f"batch events exist in version 1 and 2, not {batch_schema}")
        self.topics = topics
        self.rng = random.Random(seed)
        self.run_id = run_id
        self.recipes = tuple(recipes)
        self.batch_kg = batch_kg
        self.batch_schema = batch_schema
        self.readings = readings_per_step
        self.alarm_rate, self.fail_rate, self.spill_rate = alarm_rate, fail_rate, spill_rate
        self.clock = clock
        self.store = MaterialStore(run_id)
        self.first_recipe = self.rng.randrange(len(self.recipes))
        self.plant_time = 0.0
        self.batches_started = 0
        self.shipments = 0
        self._seq: dict[str, int] = {}
        self._readings: dict[str, int] = {}

    # -- messages ----------------------------------------------------------------
    def machines(self) -> list[tuple[str, str]]:
        """``[(step, machine), ...]`` for every machine of the line."""
        return [(step.name, machine) for step in PLANT.values() for machine in step.machines]

    def _msg_id(self, machine: str) -> str:
        self._seq[machine] = self._seq.get(machine, 0) + 1
        return f"{self.run_id}-{machine}-{self._seq[machine]}"

    def _out(self, step: str, machine: str, message_type: str, body: dict[str, Any]) -> Outgoing:
        payload = {
            "ts": round(self.clock(), 3),
            "msg_id": self._msg_id(machine),
            "plant_time": round(self.plant_time, 1),
            "site": self.topics.site,
            "line": self.topics.line,
            "step": step,
            "machine": machine,
            **body,
        }
        topic = self.topics.topic(step, machine, message_type)
        return Outgoing(machine, step, message_type, topic, payload, self.plant_time)

    def state(
        self,
        step: str,
        machine: str,
        state: str,
        batch: _Batch | None = None,
        reason: str | None = None,
    ) -> Outgoing:
        """The retained state of ``machine``."""
        body: dict[str, Any] = {
            "state": state,
            "batch_id": batch.batch_id if batch else None,
            "recipe": batch.recipe.name if batch else None,
        }
        if reason:
            body["reason"] = reason
        return self._out(step, machine, "state", body)

    def will(self, step: str, machine: str) -> tuple[str, bytes, int, bool]:
        """The Last Will of ``machine``: its state ``offline``, retained, QoS 1."""
        message = self._out(step, machine, "state", {"state": "offline", "reason": "last-will"})
        message.payload["msg_id"] = f"{self.run_id}-{machine}-will"
        return message.topic, message.encode(), message.qos, message.retain

    def _batch_event(
        self, batch: _Batch, step: str, event: str, attempt: int = 1, **fields: Any
    ) -> Outgoing:
        body: dict[str, Any] = {
            "event": event,
            "batch_id": batch.batch_id,
            "recipe": batch.recipe.name,
            "attempt": attempt,
            **fields,
        }
        if self.batch_schema == 2:
            return self._out(step, batch.machines[step], "batch", {"schema_version": 2, **body})
        return self._out(step, batch.machines[step], "batch", _as_version_1(body))

    # -- production --------------------------------------------------------------
    def run(self, batches: int | None = None) -> Iterator[Outgoing]:
        """Every message of ``batches`` batches (forever when None), in plant-time order."""
        made = 0
        while batches is None or made < batches:
            yield from self.batch()
            made += 1

    def batch(self) -> Iterator[Outgoing]:
        """Every message of the next batch."""
        self.batches_started += 1
        number = self.batches_started
        # Production runs the recipes in turn (a campaign each), starting where the seed says,
        # so any three consecutive batches make all three chocolates.
        recipe = RECIPES[self.recipes[(self.first_recipe + number - 1) % len(self.recipes)]]
        batch = _Batch(
            f"B-{self.run_id}-{number:04d}",
            recipe,
            {
                step: PLANT[step].machines[(number - 1) % len(PLANT[step].machines)]
                for step in recipe.route
            },
        )
        batch.alarm_step = self.rng.choice(recipe.route)
        yield self._batch_event(
            batch,
            recipe.route[0],
            "batch_started",
            planned_kg=self.batch_kg,
            unit="kg",
        )
        carried: list[dict[str, Any]] = []
        for step in recipe.route:
            attempt = 1
            while True:
                outcome = yield from self._step(batch, step, attempt, carried)
                verdict, carried, reason = outcome
                if verdict == "ok":
                    break
                if verdict == "rework":
                    yield self._batch_event(batch, step, "rework", attempt, reason=reason)
                    attempt += 1
                    continue
                scrapped = round(sum(lot["quantity"] for lot in carried), 3)
                yield self._batch_event(
                    batch, step, "scrapped", attempt, reason=reason, quantity=scrapped, unit="kg"
                )
                return
        yield from self._ship(batch, carried)

    def _raw_inputs(self, batch: _Batch, step: str) -> list[dict[str, Any]]:
        recipe, kg = batch.recipe, self.batch_kg
        wanted: dict[str, float] = {}
        if step == "s1_roasting":
            # beans lose shells and moisture when roasted, a little more when ground
            yields = PLANT["s1_roasting"].nominal_yield * PLANT["s2_grinding"].nominal_yield
            wanted["cocoa_beans"] = kg * recipe.fractions["cocoa_mass"] / yields
        for material, share in recipe.additions.get(step, {}).items():
            wanted[material] = kg * share
        return [
            _lot(code, material, part)
            for material, amount in wanted.items()
            for code, part in self.store.take(material, round(amount, 3))
        ]

    def _step(
        self, batch: _Batch, step: str, attempt: int, carried: list[dict[str, Any]]
    ) -> Iterator[Outgoing]:
        spec = PLANT[step]
        machine = batch.machines[step]
        recipe = batch.recipe
        inputs = [*carried, *(self._raw_inputs(batch, step) if attempt == 1 else [])]
        quantity_in = round(sum(lot["quantity"] for lot in inputs), 3)
        parameters: dict[str, float] = {}
        if step == "s5_tempering":
            parameters = recipe.tempering.as_parameters()
        elif step == "s1_roasting":
            parameters = {"roast_c": recipe.roast_c}
        elif step == "s4_conching":
            parameters = {"conche_c": recipe.conche_c, "minutes": recipe.conche_minutes}

        yield self.state(step, machine, "running", batch)
        yield self._batch_event(
            batch,
            step,
            "step_started",
            attempt,
            inputs=inputs,
            quantity_in=quantity_in,
            unit="kg",
            parameters=parameters,
        )
        duration = spec.duration(recipe)
        started = self.plant_time
        alarmed = step == batch.alarm_step or self.rng.random() < self.alarm_rate
        alarm_at = self.rng.randrange(self.readings - 1) if alarmed else None
        alarm_name, alarm_sensor, excursion, severity = spec.alarm
        for index in range(self.readings):
            phase = (index + 0.5) / self.readings
            self.plant_time = started + phase * duration
            values = {
                s.name: round(s.nominal(recipe, phase) + self.rng.gauss(0, s.noise), 2)
                for s in spec.sensors
            }
            if index == alarm_at:
                values[alarm_sensor] = excursion
            yield self._telemetry(step, machine, batch, values, spec)
            if index == alarm_at:
                yield self._alarm(step, machine, batch, alarm_name, "raised", severity, excursion)
                yield self.state(step, machine, "alarm", batch, reason=alarm_name)
            elif alarm_at is not None and index == alarm_at + 1:
                value = values[alarm_sensor]
                yield self._alarm(step, machine, batch, alarm_name, "cleared", severity, value)
                yield self.state(step, machine, "running", batch)
        self.plant_time = started + duration

        true_yield = spec.nominal_yield * (1 + self.rng.gauss(0, 0.001))
        produced = quantity_in * min(true_yield, 1.0)
        loss = round(quantity_in - produced, 3)
        if self.rng.random() < self.spill_rate:
            produced *= 1 - self.rng.uniform(0.03, 0.06)  # undeclared: the balance flags it
        outputs = self._outputs(batch, step, attempt, produced)
        yield self._batch_event(
            batch,
            step,
            "step_completed",
            attempt,
            outputs=outputs,
            quantity_out=round(sum(lot["quantity"] for lot in outputs), 3),
            loss=loss,
            unit="kg",
        )
        verdict, reason = "ok", ""
        for check in spec.quality:
            failed = self.rng.random() < self.fail_rate
            value = (
                check.failing
                if failed
                else round(check.nominal + self.rng.gauss(0, check.noise), 2)
            )
            if not failed:
                value = _clamp(value, check)
            action = "release"
            if failed:
                action = "rework" if check.on_fail == "rework" and attempt == 1 else "scrap"
                limit = check.high if check.high is not None and value > check.high else check.low
                reason = f"{check.check} {value} {check.unit} outside the limit {limit}"
            yield self._quality(step, machine, batch, attempt, check, value, failed, action)
            if failed:
                verdict = action
                break
        yield self.state(step, machine, "idle")
        return verdict, outputs, reason

    def _outputs(
        self, batch: _Batch, step: str, attempt: int, produced: float
    ) -> list[dict[str, Any]]:
        material = PRODUCT_OF_STEP[step]
        base = f"{batch.batch_id}-S{step[1]}" + (f"-R{attempt}" if attempt > 1 else "")
        if step != "s8_packaging":
            return [_lot(base, material, round(produced, 3))]
        pallets = max(1, min(3, round(produced / PALLET_KG)))
        share = round(produced / pallets, 3)
        redo = f"-R{attempt}" if attempt > 1 else ""
        return [
            _lot(f"FG-{batch.batch_id}{redo}-{n}", material, share) for n in range(1, pallets + 1)
        ]

    def _ship(self, batch: _Batch, finished: list[dict[str, Any]]) -> Iterator[Outgoing]:
        by_destination: dict[str, list[dict[str, Any]]] = {}
        for lot in finished:
            by_destination.setdefault(self.rng.choice(DESTINATIONS), []).append(lot)
        for destination, lots in by_destination.items():
            self.shipments += 1
            self.plant_time += 600.0
            shipment = {
                "shipment_id": f"SH-{self.run_id}-{self.shipments:04d}",
                "destination": destination,
                "lots": lots,
            }
            yield self._batch_event(batch, "s8_packaging", "shipped", shipment=shipment)

    def _telemetry(
        self, step: str, machine: str, batch: _Batch, values: dict[str, float], spec: Any
    ) -> Outgoing:
        self._readings[machine] = self._readings.get(machine, 0) + 1
        body = {
            "seq": self._readings[machine],
            "batch_id": batch.batch_id,
            "values": values,
            "units": {s.name: s.unit for s in spec.sensors},
        }
        return self._out(step, machine, "telemetry", body)

    def _alarm(
        self,
        step: str,
        machine: str,
        batch: _Batch,
        alarm: str,
        state: str,
        severity: str,
        value: float,
    ) -> Outgoing:
        verb = "raised" if state == "raised" else "cleared"
        body = {
            "alarm": alarm,
            "state": state,
            "severity": severity,
            "value": value,
            "batch_id": batch.batch_id,
            "message": f"{alarm.replace('_', ' ')} {verb} at {value}",
        }
        return self._out(step, machine, "alarm", body)

    def _quality(
        self,
        step: str,
        machine: str,
        batch: _Batch,
        attempt: int,
        check: QualityCheck,
        value: float,
        failed: bool,
        action: str,
    ) -> Outgoing:
        body = {
            "batch_id": batch.batch_id,
            "recipe": batch.recipe.name,
            "attempt": attempt,
            "check": check.check,
            "value": value,
            "unit": check.unit,
            "low": check.low,
            "high": check.high,
            "result": "fail" if failed else "pass",
            "action": action,
        }
        return self._out(step, machine, "quality", body)


def _lot(code: str, material: str, quantity: float) -> dict[str, Any]:
    return {"lot": code, "material": material, "quantity": quantity, "unit": "kg"}


def _clamp(value: float, check: QualityCheck) -> float:
    if check.high is not None:
        value = min(value, check.high)
    if check.low is not None:
        value = max(value, check.low)
    return value


def _as_version_1(body: dict[str, Any]) -> dict[str, Any]:
    """A version-1 batch event: bare lot codes and batch totals (see the legacy schema)."""
    legacy = {k: v for k, v in body.items() if k not in ("inputs", "outputs", "quantity_in")}
    legacy.pop("quantity_out", None)
    if "inputs" in body:
        legacy["lots_in"] = [lot["lot"] for lot in body["inputs"]]
        legacy["qty_in_kg"] = body["quantity_in"]
    if "outputs" in body:
        legacy["lots_out"] = [lot["lot"] for lot in body["outputs"]]
        legacy["qty_out_kg"] = body["quantity_out"]
    return legacy
