"""Lesson 01 (wildcards) grades solutions: it passes the reference and catches each broken one.

Each broken solution in ``tests/broken/lesson01_*`` makes one common mistake; the lesson
must fail exactly the experiments about that mistake, with a message naming the concept.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

LESSON = "labs/01_wildcards.py"
BROKEN = Path(__file__).parent / "broken"
BOTH = ("[mqtt3.1.1]", "[mqtt5]")


def names(test: str) -> set[str]:
    return {f"{test}{protocol}" for protocol in BOTH}


def test_reference_solution_passes_every_solution_experiment(run_lesson):
    run = run_lesson(LESSON, "-m", "solution")
    assert run.passed() and not run.failed(), run.output[-3000:]
    assert set(run.outcomes) >= names(
        "test_each_filter_gets_exactly_the_topics_its_question_asks_for"
    )


def test_a_hash_filter_for_every_temperature_is_caught(run_lesson):
    run = run_lesson(
        LESSON, "-m", "solution", solution=BROKEN / "lesson01_telemetry_hash_for_temperature"
    )
    test = "test_each_filter_gets_exactly_the_topics_its_question_asks_for"
    assert set(run.failed()) == names(test), run.output[-3000:]
    message = run.message(test)
    assert "[filters] every_temperature" in message
    assert "`+` matches exactly one level" in message
    assert "extra:" in message and "{root}/telemetry/press/pressure" in message


def test_a_device_that_obeys_every_machines_commands_is_caught(run_lesson):
    run = run_lesson(
        LESSON, "-m", "solution", solution=BROKEN / "lesson01_device_obeys_all_commands"
    )
    stop = "test_a_stop_for_the_conveyor_does_not_stop_the_press"
    subscription = "test_a_device_subscribes_only_to_its_own_commands"
    assert set(run.failed()) == names(stop) | names(subscription), run.output[-3000:]
    assert "The press stopped" in run.message(stop)
    assert "only to its own commands" in run.message(stop)
    assert "commands/#, which also matches commands meant for other machines" in run.message(
        subscription
    )
    assert "commands/+/press" in run.message(subscription)


def test_a_manifest_without_filters_is_told_which_entry_is_missing(run_lesson, tmp_path):
    reference = (Path(__file__).parent.parent / "solution.toml").read_text()
    roles_only = reference.split("\n[files]")[0]  # no [files] (relative paths), no [filters]
    (tmp_path / "solution.toml").write_text(roles_only)
    run = run_lesson(LESSON, "-m", "solution", "-k", "each_filter", solution=tmp_path)
    message = run.message("test_each_filter")
    assert set(run.failed()) == names(
        "test_each_filter_gets_exactly_the_topics_its_question_asks_for"
    ), run.output[-3000:]
    assert "has no [filters] every_temperature" in message
    assert "Traceback" not in message


@pytest.mark.parametrize("folder", sorted(p.name for p in BROKEN.glob("lesson01_*")))
def test_each_broken_solution_says_what_it_breaks(folder):
    text = (BROKEN / folder / "solution.toml").read_text()
    assert text.startswith("# Broken on purpose (lesson 01)"), (
        f"{folder}/solution.toml must open with a comment saying which mistake it makes"
    )


def test_telemetry_with_swapped_levels_is_caught(run_lesson):
    run = run_lesson(
        LESSON, "-m", "solution", solution=BROKEN / "lesson01_telemetry_levels_swapped"
    )
    tree = "test_devices_publish_on_the_seed_topic_tree"
    filters = "test_each_filter_gets_exactly_the_topics_its_question_asks_for"
    assert set(run.failed()) == names(tree) | names(filters), run.output[-3000:]
    message = run.message(tree)
    # the message names the first misplaced topic it saw, whichever device published it first
    assert re.search(r"\{root\}/telemetry/\w+/[\w-]+: levels 2 and 3 are swapped", message), message
    assert re.search(r"the device \([\w-]+\) comes before the sensor \(\w+\)", message), message
    assert "is not on the seed's tree" in run.message(filters)


def test_a_device_that_exits_on_a_bad_command_is_caught(run_lesson):
    run = run_lesson(
        LESSON, "-m", "solution", solution=BROKEN / "lesson01_device_exits_on_bad_command"
    )
    test = "test_a_device_rejects_a_bad_command_and_keeps_running"
    assert set(run.failed()) == {
        f"{test}[{protocol}-{payload}]"
        for protocol in ("mqtt3.1.1", "mqtt5")
        for payload in ("unknown-command", "not-json")
    }, run.output[-3000:]
    message = run.message(test)
    assert "exited after the command" in message and "it exited with status 1" in message
    assert "A command is input from the network" in message


def test_a_sensor_level_in_capitals_is_caught_by_the_topic_lint(run_lesson):
    run = run_lesson(LESSON, "-m", "solution", solution=BROKEN / "lesson01_sensor_in_capitals")
    tree = "test_devices_publish_on_the_seed_topic_tree"
    assert names(tree) <= set(run.failed()), run.output[-3000:]
    message = run.message(tree)
    assert re.search(r"\{root\}/telemetry/\w+/[A-Z]\w+: level '[A-Z]\w+' has characters", message)
    assert "[lint-topics: characters]" in message and "mqtt-lab lint-topics" in message, message
