"""Lesson 03 grades retained messages: it passes the reference and catches each broken device.

Every solution experiment of ``labs/03_retained.py`` must be able to fail. Each case
below runs the lesson (``-m solution``) against the reference with one mistake a
student makes with retained messages, and checks that the right experiment fails
with a message that names the rule.
"""

from __future__ import annotations

from pathlib import Path

import pytest

LESSON = "labs/03_retained.py"


def test_the_reference_passes_every_solution_experiment(run_lesson):
    result = run_lesson(LESSON, "-m", "solution")
    assert result.returncode == 0 and not result.failed(), result.output
    assert len(result.passed()) >= 6, result.outcomes


@pytest.mark.parametrize(
    ("mutation", "experiment", "says", "also"),
    [
        pytest.param(
            ["--retain", "telemetry"],
            "test_device_does_not_retain_telemetry",
            "publishes telemetry retained",
            (),
            id="retains-telemetry",
        ),
        pytest.param(
            ["--no-retain", "state"],
            "test_device_state_and_status_wait_for_late_dashboards",
            "retain=True",
            ("test_device_retained_state_follows_the_device",),
            id="state-not-retained",
        ),
        pytest.param(
            ["--retain-once", "state"],
            "test_device_retained_state_follows_the_device",
            "every state change must be published retained",
            (),
            id="only-the-first-state-retained",
        ),
    ],
)
def test_a_broken_device_fails_the_experiment_that_teaches_its_rule(
    run_lesson, mutant_solution, mutation, experiment, says, also
):
    result = run_lesson(LESSON, "-m", "solution", solution=mutant_solution("device", *mutation))
    failed = result.failed(experiment)
    assert failed, f"{experiment} should fail for a device run with {mutation}:\n{result.output}"
    assert says in result.message(experiment), result.message(experiment)
    others = [n for n in result.failed() if not any(e in n for e in (experiment, *also))]
    assert not others, f"only {experiment} should fail, but so did {others}"


def test_a_controller_that_retains_its_commands_is_caught(run_lesson):
    broken = Path(__file__).parent / "broken" / "lesson03_controller_retains_commands"
    experiment = "test_controller_does_not_retain_its_commands"
    result = run_lesson(LESSON, "-m", "solution", solution=broken)
    assert sorted(result.failed()) == [f"{experiment}[mqtt3.1.1]", f"{experiment}[mqtt5]"], (
        result.output[-3000:]
    )
    message = result.message(experiment)
    assert "A command is an event, never state" in message and "stale 'stop'" in message, message
