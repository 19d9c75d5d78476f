"""Lesson 02 (QoS) grades solutions: it passes the reference and catches each broken one.

Each broken solution in ``tests/broken/lesson02_*`` makes one common mistake; the lesson
must fail exactly the experiments about that mistake, with a message naming the concept.
"""

from __future__ import annotations

from pathlib import Path

import pytest

LESSON = "labs/02_qos.py"
BROKEN = Path(__file__).parent / "broken"
BOTH = ("[mqtt3.1.1]", "[mqtt5]")


def names(test: str) -> set[str]:
    return {f"{test}{protocol}" for protocol in BOTH}


def test_reference_solution_passes_every_solution_experiment(run_lesson):
    run = run_lesson(LESSON, "-m", "solution")
    assert run.passed() and not run.failed(), run.output[-3000:]
    assert set(run.outcomes) >= names("test_controller_gets_the_alarms_raised_while_it_was_away")


def test_telemetry_at_qos1_is_caught(run_lesson):
    run = run_lesson(LESSON, "-m", "solution", solution=BROKEN / "lesson02_telemetry_at_qos1")
    test = "test_device_sends_telemetry_at_qos0"
    assert set(run.failed()) == names(test), run.output[-3000:]
    message = run.message(test)
    assert "Telemetry goes at QoS 0" in message
    assert "/telemetry/press-01/temperature at QoS 1" in message
    assert "Publish telemetry with qos=0" in message


@pytest.mark.broken_sweep
def test_a_controller_subscribing_to_alarms_at_qos0_is_caught(run_lesson):
    run = run_lesson(
        LESSON, "-m", "solution", solution=BROKEN / "lesson02_controller_alarms_at_qos0"
    )
    test = "test_controller_gets_the_alarms_raised_while_it_was_away"
    assert set(run.failed()) == names(test), run.output[-3000:]
    message = run.message(test)
    assert "a QoS 0 subscription has nothing queued" in message
    assert "Subscribe to alarms at QoS 1" in message
    assert "/alarms/# at QoS 0" in message  # the broker log's evidence


@pytest.mark.parametrize("folder", sorted(p.name for p in BROKEN.glob("lesson02_*")))
def test_each_broken_solution_says_what_it_breaks(folder):
    text = (BROKEN / folder / "solution.toml").read_text()
    assert text.startswith("# Broken on purpose (lesson 02)"), (
        f"{folder}/solution.toml must open with a comment saying which mistake it makes"
    )


def test_a_manifest_without_a_controller_is_told_which_role_is_missing(run_lesson, tmp_path):
    reference = (Path(__file__).parent.parent / "solution.toml").read_text()
    device_only = reference.split("\n[roles.controller]")[0]
    (tmp_path / "solution.toml").write_text(device_only)
    run = run_lesson(LESSON, "-m", "solution", "-k", "controller", solution=tmp_path)
    expected = names("test_controller_sends_commands_at_qos1") | names(
        "test_controller_gets_the_alarms_raised_while_it_was_away"
    )
    assert set(run.failed()) == expected, run.output[-3000:]
    for test in expected:
        message = run.messages[test]
        assert "has no [roles.controller]" in message
        assert "Traceback" not in message and "During handling" not in message


@pytest.mark.parametrize(
    ("role", "mutation", "experiment", "says"),
    [
        pytest.param(
            "device",
            ("--qos", "alarms=0"),
            "test_device_sends_alarms_state_and_status_at_qos1",
            "/alarms/press-01/",
            id="alarms-at-qos0",
        ),
        pytest.param(
            "device",
            ("--qos", "state=0"),
            "test_device_sends_alarms_state_and_status_at_qos1",
            "/state/press-01 at QoS 0",
            id="state-at-qos0",
            marks=pytest.mark.broken_sweep,
        ),
        pytest.param(
            "controller",
            ("--qos", "commands=0"),
            "test_controller_sends_commands_at_qos1",
            "Commands go at QoS 1",
            id="commands-at-qos0",
            marks=pytest.mark.broken_sweep,
        ),
    ],
)
def test_a_reference_program_with_the_wrong_qos_is_caught(
    run_lesson, mutant_solution, role, mutation, experiment, says
):
    run = run_lesson(LESSON, "-m", "solution", solution=mutant_solution(role, *mutation))
    assert set(run.failed()) == names(experiment), run.output[-3000:]
    assert says in run.message(experiment), run.message(experiment)
