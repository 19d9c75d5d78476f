"""Lesson 05 (sessions) grades what it claims to: it passes the reference solution and fails
each deliberately broken controller in ``tests/broken/lesson05_*`` with a message naming the
concept.

Each broken folder is a small student-like paho controller with one common mistake. The
child pytest runs only the lesson's ``solution`` experiments, to stay fast.
"""

from __future__ import annotations

from pathlib import Path

import pytest

LESSON = "labs/05_sessions.py"
BROKEN = Path(__file__).resolve().parent / "broken"

PERSISTENT = "test_persistent_controller_acts_on_alarms_raised_while_it_was_stopped"
CLEAN = "test_clean_session_controller_does_not_get_alarms_raised_while_it_was_stopped"


def test_lesson_05_passes_against_the_reference_solution(run_lesson):
    run = run_lesson(LESSON, "-m", "solution")

    assert run.outcomes, f"the child pytest ran no experiment:\n{run.output[-2000:]}"
    assert not run.failed(), f"failed against the reference: {run.failed()}\n{run.output[-3000:]}"
    assert len(run.passed(PERSISTENT)) == 2 and len(run.passed(CLEAN)) == 2, run.outcomes


@pytest.mark.parametrize(
    ("variant", "concept"),
    [
        pytest.param(
            "lesson05_always_clean",
            ["asked for a persistent session", "clean", "= 1", "queued alarms"],
            id="clean-session-when-persistent-is-asked",
        ),
        pytest.param(
            "lesson05_random_client_id",
            ["came back as", "A session belongs to a client id", "client id the lab gives"],
            id="new-random-client-id-at-each-start",
        ),
    ],
)
def test_lesson_05_catches_a_broken_controller(run_lesson, variant, concept):
    run = run_lesson(LESSON, "-m", "solution", solution=BROKEN / variant)

    assert len(run.failed(PERSISTENT)) == 2, (
        f"{variant}: {PERSISTENT} must fail on both MQTT versions; outcomes: {run.outcomes}\n"
        f"{run.output[-3000:]}"
    )
    message = run.message(PERSISTENT)
    for words in concept:
        assert words in message, f"{variant}: the failure should say {words!r}; it says:\n{message}"
    assert len(run.passed(CLEAN)) == 2, (
        f"{variant} makes one mistake only: {CLEAN} must still pass; outcomes: {run.outcomes}"
    )


def test_lesson_05_catches_a_controller_that_keeps_its_session_when_clean_is_asked(run_lesson):
    run = run_lesson(
        LESSON, "-m", "solution", "-k", CLEAN, solution=BROKEN / "lesson05_always_persistent"
    )

    assert len(run.failed(CLEAN)) == 2, (
        f"{CLEAN} must fail on both MQTT versions; outcomes: {run.outcomes}\n{run.output[-3000:]}"
    )
    message = run.message(CLEAN)
    for words in ("session = clean", "A clean session must not receive", "clean start on"):
        assert words in message, f"the failure should say {words!r}; it says:\n{message}"


def test_lesson_05_catches_a_device_that_subscribes_only_once(run_lesson):
    hears = "test_a_device_hears_its_commands_again_after_its_connection_drops"
    run = run_lesson(LESSON, "-m", "solution", solution=BROKEN / "lesson05_device_subscribes_once")

    assert sorted(run.failed()) == [f"{hears}[mqtt3.1.1]", f"{hears}[mqtt5]"], (
        f"only {hears} must fail, on both MQTT versions; outcomes: {run.outcomes}\n"
        f"{run.output[-3000:]}"
    )
    message = run.message(hears)
    for words in ("no SUBSCRIBE from it afterwards", "subscribe to your commands in on_connect"):
        assert words in message, f"the failure should say {words!r}; it says:\n{message}"
