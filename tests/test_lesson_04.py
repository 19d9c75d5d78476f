"""Lesson 04 (Last Will) grades what it claims to: it passes the reference solution and fails
each deliberately broken device in ``tests/broken/lesson04_*`` with a message naming the concept.

Each broken folder is a small student-like paho program with one common mistake. The child
pytest runs only the lesson's ``solution`` experiments (and, for the broken ones, only the
experiment that must catch the mistake plus one it must not trip), to stay fast.
"""

from __future__ import annotations

from pathlib import Path

import pytest

LESSON = "labs/04_lwt.py"
BROKEN = Path(__file__).resolve().parent / "broken"

KILLED = "test_killed_device_is_declared_offline_by_its_retained_qos1_will"
CRASHED = "test_device_crashing_by_itself_shows_offline_to_a_late_dashboard"
PAUSED = "test_paused_device_is_declared_offline_within_its_keepalive_budget"
GRACEFUL = "test_device_stopped_gracefully_publishes_offline_itself"


def test_lesson_04_passes_against_the_reference_solution(run_lesson):
    run = run_lesson(LESSON, "-m", "solution")

    assert run.outcomes, f"the child pytest ran no experiment:\n{run.output[-2000:]}"
    assert not run.failed(), f"failed against the reference: {run.failed()}\n{run.output[-3000:]}"
    for experiment in (KILLED, CRASHED, PAUSED, GRACEFUL):
        assert run.passed(experiment), f"{experiment} did not run: {sorted(run.outcomes)}"


@pytest.mark.parametrize(
    ("variant", "catches", "concept", "spares"),
    [
        pytest.param(
            "lesson04_no_will",
            KILLED,
            ["Last Will", "none came", "will_set("],
            GRACEFUL,
            id="no-will",
            marks=pytest.mark.broken_sweep,
        ),
        pytest.param(
            "lesson04_will_after_online",
            KILLED,
            ["Last Will", "a will set after connect() only counts for the next connection"],
            GRACEFUL,
            id="will-set-after-online",
            marks=pytest.mark.broken_sweep,
        ),
        pytest.param(
            "lesson04_will_not_retained",
            KILLED,
            ["arrived without the retain flag", "retain=True"],
            GRACEFUL,
            id="will-not-retained",
        ),
        pytest.param(
            "lesson04_will_not_retained",
            CRASHED,
            ["A dashboard opened afterwards", "'online'", "must be retained"],
            GRACEFUL,
            id="will-not-retained-late-dashboard",
            marks=pytest.mark.broken_sweep,
        ),
        pytest.param(
            "lesson04_no_goodbye",
            GRACEFUL,
            ["is the device's Last Will", "Handle SIGTERM", "'shutdown'"],
            KILLED,
            id="no-offline-on-sigterm",
            marks=pytest.mark.broken_sweep,
        ),
        pytest.param(
            "lesson04_fixed_keepalive",
            PAUSED,
            ["keepalive", "1.5 ×", "SIGSTOP"],
            KILLED,
            id="keepalive-ignored",
            marks=pytest.mark.broken_sweep,
        ),
    ],
)
def test_lesson_04_catches_a_broken_device(run_lesson, variant, catches, concept, spares):
    run = run_lesson(
        LESSON, "-m", "solution", "-k", f"{catches} or {spares}", solution=BROKEN / variant
    )

    caught = run.failed(catches)
    assert caught and len(caught) == len([n for n in run.outcomes if catches in n]), (
        f"{variant}: every run of {catches} must fail; outcomes: {run.outcomes}\n"
        f"{run.output[-3000:]}"
    )
    message = run.message(catches)
    for words in concept:
        assert words in message, f"{variant}: the failure should say {words!r}; it says:\n{message}"
    assert "Traceback" not in message, f"{variant}: a harness traceback leaked:\n{message}"
    assert run.passed(spares) and not run.failed(spares), (
        f"{variant} makes one mistake only: {spares} must still pass; outcomes: {run.outcomes}"
    )
