"""Lesson 07's harness: the side-by-side cases, the scenarios on a real broker, the verdicts.

``core.traceability`` runs the lesson's slow cases (:class:`SideBySide`, the scenarios) and
``experiment.traceability`` judges them; each verdict is shown here to fail on the mistake it
names and to pass on a correct run, so that the lesson's experiments keep their power to fail.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from mqtt_factory_lab.core.client import ReceivedMessage
from mqtt_factory_lab.core.roles import RoleError
from mqtt_factory_lab.core.traceability import (
    DeadLetter,
    KilledLine,
    RedeliveredRecord,
    SideBySide,
    record,
)
from mqtt_factory_lab.experiment import unique
from mqtt_factory_lab.experiment.traceability import (
    dead_letter_problem,
    duplicate_problem,
    policy_break,
    trace_break,
)

# -- core.traceability.SideBySide -----------------------------------------------------------


class FakeCase:
    """A scenario reduced to its waiting: ``run`` waits for ``gate`` (or its abandonment)."""

    def __init__(self, gate: threading.Barrier | threading.Event, fail: str = "") -> None:
        self.gate, self.fail = gate, fail
        self.closed = self.abandoned = False
        self.released = threading.Event()

    def run(self) -> FakeCase:
        if isinstance(self.gate, threading.Barrier):
            self.gate.wait(timeout=5)  # breaks unless every case of the barrier runs at once
        else:
            self.released.wait(timeout=30)
        if self.fail:
            raise RoleError(self.fail)
        return self

    def abandon(self) -> None:
        self.abandoned = True
        self.released.set()

    def close(self) -> None:
        self.closed = True


def test_side_by_side_runs_cases_at_once_and_each_only_once() -> None:
    cases, both = SideBySide(), threading.Barrier(2)
    made: list[str] = []

    def make(name: str) -> Any:
        made.append(name)
        return FakeCase(both)

    try:
        cases.start("a", lambda: make("a"))
        cases.start("b", lambda: make("b"))
        cases.start("a", lambda: make("a again"))  # already running: not started twice
        assert cases.result("a", timeout=10) is cases.case("a")
        assert cases.result("b", timeout=10) is cases.case("b")
        assert made == ["a", "b"] and "a" in cases and "c" not in cases
    finally:
        cases.close()
    assert cases.case("a").closed and cases.case("b").closed


def test_side_by_side_hands_the_experiment_what_went_wrong_in_its_case() -> None:
    cases, gate = SideBySide(), threading.Event()
    gate.set()
    try:
        cases.start("broken", lambda: FakeCase(threading.Barrier(1), fail="never stored it"))
        with pytest.raises(RoleError, match="never stored it"):
            cases.result("broken", timeout=10)
        cases.finish("broken")  # closed even though it failed
    finally:
        cases.close()
    assert cases.case("broken").closed


def test_side_by_side_abandons_a_case_the_module_no_longer_waits_for() -> None:
    cases = SideBySide()
    cases.start("slow", lambda: FakeCase(threading.Event()))
    started = time.monotonic()
    cases.close()  # Ctrl-C or -x: the case would wait 30 s
    assert time.monotonic() - started < 10
    assert cases.case("slow").abandoned and cases.case("slow").closed


def test_side_by_side_starts_a_short_case_once_the_long_ones_are_under_way() -> None:
    cases = SideBySide()
    long = FakeCase(threading.Event())
    long.under_way = threading.Event()  # type: ignore[attr-defined]
    short = FakeCase(threading.Barrier(1))
    ran = threading.Event()
    short.run = lambda: (ran.set(), short)[1]  # type: ignore[method-assign]
    try:
        cases.start("long", lambda: long)
        cases.start("short", lambda: short, after=["long", "not started"])
        assert cases.started() == ["long", "short"]
        assert not ran.wait(0.3), "the short case began before the long one was under way"
        long.under_way.set()  # type: ignore[attr-defined]
        assert ran.wait(5) and cases.result("short", timeout=5) is short
        assert not cases.result("short").abandoned
    finally:
        long.released.set()
        cases.close()


# -- core.traceability scenarios, with the reference solution -------------------------------


def test_redelivered_record_and_dead_letter_cases_run_the_reference_data_center(
    factory_launcher, tmp_path: Path
) -> None:
    for folder in ("twice", "bad"):
        (tmp_path / folder).mkdir()
    twice = RedeliveredRecord(factory_launcher(), tmp_path / "twice")
    bad = DeadLetter(
        factory_launcher(root=f"lab/{unique('helpers')}/factory"),
        tmp_path / "bad",
        message_type="quality",
        payload=b"{not json",
    )
    try:
        assert twice.run().copies == 1
        bad.run()
        assert bad.datacenter.is_running() and bad.stored_good()
        assert [(p, bool(r)) for _, p, r in bad.letters()] == [(b"{not json", True)]
        assert dead_letter_problem(bad, "is not JSON") is None and not bad.kept_as_record()
    finally:
        twice.close()
        bad.close()


def test_killed_line_case_sees_every_machine_go_offline(factory_launcher, tmp_path: Path) -> None:
    case = KilledLine(factory_launcher(), tmp_path)
    try:
        case.run()
        assert case.machines and case.still_running() == []
    finally:
        case.close()


# -- experiment.traceability: each verdict names the mistake --------------------------------

ROUTE = ["s3_refining", "s8_packaging"]


def lots(*names: str) -> list[dict[str, str]]:
    return [{"lot": name, "material": "x"} for name in names]


def batch(*, shipped: bool = True, second_input: str = "M1") -> list[dict[str, Any]]:
    """A batch through :data:`ROUTE`: sugar to M1 at refining, M1 to FG1 at packaging."""
    events = [
        {"event": "batch_started", "step": "s3_refining"},
        {"event": "step_started", "step": "s3_refining", "attempt": 1, "inputs": lots("SUG")},
        {"event": "step_completed", "step": "s3_refining", "outputs": lots("M1")},
        {
            "event": "step_started",
            "step": "s8_packaging",
            "attempt": 1,
            "inputs": lots(second_input),
        },
        {"event": "step_completed", "step": "s8_packaging", "outputs": lots("FG1")},
    ]
    if shipped:
        events.append(
            {"event": "shipped", "step": "s8_packaging", "shipment": {"lots": lots("FG1")}}
        )
    return events


def test_trace_break_finds_the_first_place_a_batch_stops_telling_where_its_lots_went() -> None:
    qc = {"s3_refining", "s8_packaging"}
    assert trace_break("B1", "white", ROUTE, batch(), qc) is None
    assert "begins with a batch_started" in trace_break("B1", "white", ROUTE, batch()[1:], qc)
    missing_step = [e for e in batch() if e.get("step") != "s8_packaging"]
    assert "must complete the steps" in trace_break("B1", "white", ROUTE, missing_step, qc)
    assert "no roasting" in trace_break("B1", "white", ROUTE, missing_step, qc)
    orphan = trace_break("B1", "white", ROUTE, batch(second_input="ELSEWHERE"), qc)
    assert "must consume a lot an earlier step of the batch produced" in orphan
    assert "every QC point" in trace_break("B1", "white", ROUTE, batch(), {"s3_refining"})
    unshipped = trace_break("B1", "white", ROUTE, batch(shipped=False), qc)
    assert "not shipped: ['FG1']" in unshipped
    scrapped = [*batch(shipped=False)[:3], {"event": "scrapped", "step": "s3_refining"}]
    assert trace_break("B1", "white", ROUTE, scrapped, {"s3_refining"}) is None


def message(topic: str, payload: dict[str, Any], qos: int, retain: bool) -> ReceivedMessage:
    return ReceivedMessage(topic, json.dumps(payload).encode(), qos, retain, False)


def test_policy_break_names_the_wrong_qos_the_wrong_retain_flag_and_a_broken_schema() -> None:
    root = "lab/policy/factory"
    topic = f"{root}/tunis-01/line-a/s8_packaging/packer-03/quality"
    good = message(topic, record("quality", "s8_packaging"), 1, False)
    assert policy_break([good], "quality", 1, False, root) is None
    at_qos0 = message(topic, record("quality", "s8_packaging"), 0, False)
    assert "must be published at QoS 1" in policy_break([good, at_qos0], "quality", 1, False, root)
    kept = message(topic, record("quality", "s8_packaging"), 1, True)
    assert "Only state is retained" in policy_break([kept], "quality", 1, False, root)
    invalid = message(
        topic, record("quality", "s8_packaging", check=False, result="maybe"), 1, False
    )
    assert "break their JSON Schema" in policy_break([invalid], "quality", 1, False, root)


class FakeRun:
    """What the verdicts read of a killed-data-center or dead-letter case."""

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)

    def states(self) -> set[str]:
        return self.state_ids

    def letters(self) -> list[tuple[str, bytes, str]]:
        return self.rows

    def stored_good(self) -> bool:
        return self.good_stored

    def kept_as_record(self) -> bool:
        return self.kept


def test_duplicate_problem_tells_a_resent_record_from_a_retained_state_sent_again() -> None:
    def run(stored: dict[str, int]) -> Any:
        return FakeRun(stored=Counter(stored), state_ids={"s1"})

    assert duplicate_problem(run({"r1": 1, "s1": 1})) is None
    assert "record(s) are now stored twice" in duplicate_problem(run({"r1": 2, "s1": 2}))
    assert "retained states" in duplicate_problem(run({"r1": 1, "s1": 2}))


class Datacenter:
    def __init__(self, running: bool) -> None:
        self.running = running

    def is_running(self) -> bool:
        return self.running

    def describe_failure(self, what: str) -> str:
        return f"the datacenter role {what}"


def test_dead_letter_problem_names_a_crash_a_drop_a_re_encoding_and_a_trusted_payload() -> None:
    payload, topic = b"\xff\xfe", "lab/t/quality"

    def run(**changes: Any) -> Any:
        fields = {
            "payload": payload,
            "topic": topic,
            "rows": [(topic, payload, "not UTF-8")],
            "datacenter": Datacenter(True),
            "database": FakeRun(describe=lambda: "its database holds 1 message(s)"),
            "good_stored": True,
            "kept": False,
        }
        return FakeRun(**{**fields, **changes})

    assert dead_letter_problem(run(), "is not UTF-8 text") is None
    assert "must never crash" in dead_letter_problem(run(datacenter=Datacenter(False)), "x")
    assert "did not store the valid record" in dead_letter_problem(run(good_stored=False), "x")
    assert "dropped silently" in dead_letter_problem(run(rows=[]), "x")
    re_encoded = run(rows=[(topic, "\ufffd\ufffd".encode(), "not UTF-8")])
    assert "Store the original bytes" in dead_letter_problem(re_encoded, "x")
    assert "as if it were a record" in dead_letter_problem(run(kept=True), "x")
