"""The chocolate line (``sim.chocolate``): recipes, steps, lots and messages, then on a broker.

Most tests drive :class:`sim.chocolate.line.LineCore` directly (no network, fixed clock):
what it decides is what the runner publishes. The last ones run ``python -m sim.chocolate``
against the test broker and watch the wire.
"""

from __future__ import annotations

import importlib.util
import json
import signal
import sys
from collections import Counter, defaultdict
from typing import Any

import pytest

import sim.datacenter.contract
from mqtt_factory_lab import contract
from mqtt_factory_lab.contract import validate_message
from mqtt_factory_lab.core.paths import LABS_DIR
from sim.chocolate.line import LineCore, Outgoing
from sim.chocolate.lots import MaterialStore
from sim.chocolate.plant import MACHINES, PLANT, QOS, RETAINED, ChocolateTopics
from sim.chocolate.recipes import RECIPES, STEPS

TS = 1767225600.0
ROOT = "lab/cafe0001/factory"


def run(batches: int = 12, seed: int = 7, **options: Any) -> list[Outgoing]:
    core = LineCore(ChocolateTopics(ROOT), seed=seed, run_id="t1", clock=lambda: TS, **options)
    return list(core.run(batches))


def batch_events(messages: list[Outgoing]) -> dict[str, list[dict[str, Any]]]:
    events: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for m in messages:
        if m.message_type == "batch":
            events[m.payload["batch_id"]].append(m.payload)
    return events


def test_same_seed_makes_the_same_production_and_another_seed_another() -> None:
    first = [m.encode() for m in run(seed=3)]
    assert first == [m.encode() for m in run(seed=3)], "same seed, run id and clock: same bytes"
    assert first != [m.encode() for m in run(seed=4)], "another seed must change the production"


@pytest.mark.parametrize("version", [1, 2])
def test_every_message_fits_its_schema_and_its_topic(version: int) -> None:
    messages = run(batch_schema=version)
    for message in messages:
        validate_message(message.topic, message.encode(), root=ROOT)
    batches = [m.payload for m in messages if m.message_type == "batch"]
    if version == 2:
        assert all(p["schema_version"] == 2 for p in batches)
    else:
        assert all("schema_version" not in p and "inputs" not in p for p in batches)
        assert any("lots_in" in p for p in batches) and any("lots_out" in p for p in batches)


def test_qos_and_retain_follow_the_seeds_policy() -> None:
    seen = {m.message_type: (m.qos, m.retain) for m in run()}
    assert seen == {
        "telemetry": (0, False),
        "state": (1, True),
        "alarm": (1, False),
        "quality": (1, False),
        "batch": (1, False),
    }
    assert {t: q for t, (q, _) in seen.items()} == QOS


def test_topics_follow_the_seeds_namespace() -> None:
    for message in run(3):
        root_levels = ROOT.count("/") + 1
        site, line, step, machine, kind = message.topic.split("/")[root_levels:]
        assert (site, line) == ("tunis-01", "line-a")
        assert MACHINES[machine] == step and kind == message.message_type
    assert {"s5_tempering", "s8_packaging"} <= set(STEPS) and len(STEPS) == 8


def test_white_chocolate_has_no_cocoa_mass_and_skips_roasting_and_grinding() -> None:
    events = batch_events(run(12))
    white = [e for e in events.values() if e[0]["recipe"] == "white"]
    assert white
    for batch in white:
        steps = {e["step"] for e in batch if e["event"] == "step_started"}
        assert steps == set(STEPS[2:])
        materials = {i["material"] for e in batch for i in e.get("inputs", [])}
        assert not materials & {"cocoa_beans", "cocoa_nibs", "cocoa_mass"}
        assert "cocoa_butter" in materials


def test_milk_and_white_use_milk_powder_and_dark_does_not() -> None:
    uses: dict[str, set[str]] = defaultdict(set)
    for batch in batch_events(run(12)).values():
        for event in batch:
            uses[batch[0]["recipe"]] |= {i["material"] for i in event.get("inputs", [])}
    assert "milk_powder" in uses["milk"] and "milk_powder" in uses["white"]
    assert "milk_powder" not in uses["dark"] and "cocoa_beans" in uses["dark"]
    assert "hazelnut_paste" in uses["milk"]


def test_tempering_curve_differs_by_recipe() -> None:
    curves = {}
    for batch in batch_events(run(6)).values():
        for event in batch:
            if event["event"] == "step_started" and event["step"] == "s5_tempering":
                curves[event["recipe"]] = event["parameters"]
    assert curves["dark"]["work_c"] > curves["milk"]["work_c"] > curves["white"]["work_c"]
    assert curves == {name: r.tempering.as_parameters() for name, r in RECIPES.items()}


def test_each_step_consumes_the_lot_the_previous_step_produced() -> None:
    for batch in batch_events(run(12)).values():
        last_outputs: set[str] = set()
        for event in batch:
            if event["event"] == "step_started" and last_outputs:
                assert last_outputs <= {i["lot"] for i in event["inputs"]}, event
            if event["event"] == "step_completed":
                last_outputs = {o["lot"] for o in event["outputs"]}


def test_failed_quality_leads_to_rework_then_scrap() -> None:
    messages = run(60, seed=11)
    results = [m.payload for m in messages if m.message_type == "quality"]
    failures = [r for r in results if r["result"] == "fail"]
    assert failures and all(r["action"] in ("rework", "scrap") for r in failures)
    assert all(r["action"] == "release" for r in results if r["result"] == "pass")
    events = batch_events(messages)
    for failure in failures:
        kinds = [(e["event"], e["step"], e["attempt"]) for e in events[failure["batch_id"]]]
        if failure["action"] == "rework":
            assert ("rework", failure["step"], failure["attempt"]) in kinds
            assert ("step_started", failure["step"], failure["attempt"] + 1) in kinds
        else:
            assert kinds[-1][0] == "scrapped", "a scrapped batch ends there"
    assert {f["action"] for f in failures} == {"rework", "scrap"}, "60 batches show both"


def test_every_batch_sees_an_alarm_raised_and_cleared_within_one_step() -> None:
    messages = run(12)
    alarms: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for m in messages:
        if m.message_type == "alarm":
            alarms[m.payload["batch_id"]].append(m.payload)
    assert set(alarms) == set(batch_events(messages))
    for raised_and_cleared in alarms.values():
        states = Counter(a["state"] for a in raised_and_cleared)
        assert states["raised"] == states["cleared"] >= 1


def test_finished_lots_of_every_good_batch_are_shipped() -> None:
    for batch in batch_events(run(12)).values():
        if batch[-1]["event"] == "scrapped":
            continue
        packed = [
            e for e in batch if e["event"] == "step_completed" and e["step"] == "s8_packaging"
        ]
        finished = {o["lot"] for o in packed[-1]["outputs"]}
        shipped = {
            lot["lot"] for e in batch if e["event"] == "shipped" for lot in e["shipment"]["lots"]
        }
        assert finished == shipped


def test_raw_lots_are_used_up_one_after_another() -> None:
    store = MaterialStore("x")
    taken = [store.take("hazelnut_paste", 15.0) for _ in range(4)]
    assert taken == [
        [("HZP-x-001", 15.0)],
        [("HZP-x-001", 15.0)],
        [("HZP-x-001", 10.0), ("HZP-x-002", 5.0)],
        [("HZP-x-002", 15.0)],
    ]


def test_every_step_has_machines_and_a_yield_below_one() -> None:
    for step in PLANT.values():
        assert step.machines and 0.5 < step.nominal_yield < 1.0


# -- one copy of each fact, tied together ------------------------------------------------


def test_steps_and_message_types_agree_between_line_contract_data_center_and_lesson() -> None:
    assert contract.chocolate_steps() == STEPS, (
        "sim/chocolate/recipes.py (STEPS) and schemas/chocolate_batch.schema.json "
        "($defs.step) must list the same steps, in the same order"
    )
    assert set(QOS) == set(contract.CHOCOLATE_SCHEMAS) == set(sim.datacenter.contract.MESSAGE_TYPES)
    assert sim.datacenter.contract.BATCH_SCHEMAS == contract.CHOCOLATE_BATCH_VERSIONS
    spec = importlib.util.spec_from_file_location("lesson07", LABS_DIR / "07_traceability.py")
    assert spec and spec.loader
    lesson = importlib.util.module_from_spec(spec)
    sys.modules["lesson07"] = lesson  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(lesson)
    finally:
        del sys.modules["lesson07"]
    assert {kind: (QOS[kind], kind in RETAINED) for kind in QOS} == lesson.POLICY, (
        "labs/07_traceability.py (POLICY) grades the QoS policy sim/chocolate/plant.py publishes"
    )


@pytest.mark.parametrize("kind", sorted(QOS))
def test_schema_description_states_qos_and_retain_as_the_line_publishes(kind: str) -> None:
    text = contract.schema(contract.CHOCOLATE_SCHEMAS[kind])["description"]
    retained = "RETAINED" if kind in RETAINED else "NOT retained"
    for needed in (f"<root>/<site>/<line>/<step>/<machine>/{kind}", f"QoS {QOS[kind]}", retained):
        assert needed in text, f"the {kind} schema's description should say {needed!r}: {text}"


# -- the program on a broker ------------------------------------------------------------


def test_help_describes_the_line(run_program, nowhere) -> None:
    done = run_program("sim.chocolate", "--help", broker=nowhere)
    assert done.returncode == 0 and "--batches" in done.stdout and "QoS" in done.stdout


def test_unknown_recipe_is_a_usage_error(run_program, nowhere) -> None:
    done = run_program("sim.chocolate", "--recipes", "ruby", broker=nowhere)
    assert done.returncode == 2 and "unknown recipe(s) ruby" in done.stderr


def test_missing_broker_is_reported_with_what_to_do(run_program, nowhere) -> None:
    done = run_program("sim.chocolate", "--batches", "1", broker=nowhere, timeout=30)
    assert done.returncode == 1
    assert "cannot reach the MQTT broker" in done.stderr and "VF_BROKER_PORT" in done.stderr


def test_line_publishes_valid_messages_and_leaves_machines_offline(
    sim_program, mqtt_client, topic_root, unique_id
) -> None:
    watcher = mqtt_client()
    watcher.subscribe(f"{topic_root}/#", qos=2, retain_as_published=True)
    prefix = unique_id("line")
    line = sim_program(
        "sim.chocolate", "--batches", "2", "--time-scale", "0", "--client-id", prefix
    )
    assert line.wait_exit(60) == 0, line.describe_failure("did not finish its two batches")
    watcher.sync()
    received = watcher.received()
    assert {m.topic.rsplit("/", 1)[1] for m in received} == set(QOS)
    for message in received:
        validate_message(message.topic, message.payload, root=topic_root)
        kind = message.topic.rsplit("/", 1)[1]
        assert (message.qos, message.retain) == (QOS[kind], kind == "state"), message.describe()
    assert "done: 2 batches" in line.output()

    dashboard = mqtt_client()
    dashboard.subscribe(f"{topic_root}/+/+/+/+/state", qos=1)
    dashboard.sync()
    states = {m.topic: json.loads(m.payload) for m in dashboard.received()}
    assert len(states) == len(MACHINES)
    assert {(s["state"], s.get("reason")) for s in states.values()} == {("offline", "shutdown")}


def test_sigterm_stops_the_line_with_every_machine_offline_by_shutdown(
    sim_program, mqtt_client, topic_root, unique_id
) -> None:
    line = sim_program(
        "sim.chocolate", "--batches", "1000", "--time-scale", "600", "--client-id", unique_id("l")
    )
    line.signal(signal.SIGTERM)
    assert line.wait_exit(15) == 0, line.describe_failure("did not stop cleanly on SIGTERM")
    assert "stopped: " in line.output()
    dashboard = mqtt_client()
    dashboard.subscribe(f"{topic_root}/+/+/+/+/state", qos=1)
    dashboard.sync()
    states = [json.loads(m.payload) for m in dashboard.received()]
    assert len(states) == len(MACHINES)
    assert {(s["state"], s.get("reason")) for s in states} == {("offline", "shutdown")}
