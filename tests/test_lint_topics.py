"""``mqtt-lab lint-topics``: every seeded topic mistake is flagged with its rule, alone.

``tests/broken/topic_mistakes.jsonl`` is a capture file of wrong messages, each with the
rule it breaks (``expect``). The reference factory passing clean is checked on a live
sandbox in ``test_sandbox.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mqtt_factory_lab.lint_topics import Message, lint, lint_message, lint_topic, read_capture

MISTAKES = Path(__file__).parent / "broken" / "topic_mistakes.jsonl"
CASES = [json.loads(line) for line in MISTAKES.read_text().splitlines() if line.strip()]
TELEMETRY = {"ts": 1767225600.0, "device_id": "press", "sensor": "temperature", "value": 1.0,
             "unit": "C", "seq": 0}  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c["mistake"].replace(" ", "-") for c in CASES])
def test_each_seeded_mistake_is_flagged_with_the_rule_it_breaks(case):
    message = next(read_capture([json.dumps(case)]))
    rules = [finding.rule for finding in lint_message(message)]
    assert rules == [case["expect"]], (
        f"{case['mistake']} ({case['topic']}) should break exactly {case['expect']!r}, "
        f"the lint found {rules}"
    )


@pytest.mark.parametrize(
    "topic",
    [
        "factory/telemetry/press/temperature",
        "factory/alarms/oven/temperature",
        "factory/commands/dashboard/conveyor",
        "factory/state/robot_arm",
        "factory/status/environment",
        "factory/events/controller",
        "factory/replies/oven/dashboard",
        "factory/tunis-01/line-a/s5_tempering/temper-01/telemetry",
        "factory/tunis-01/line-a/s8_packaging/packer-03/quality",
    ],
)
def test_the_seeds_example_topics_pass(topic):
    assert lint_topic(topic) == []


def test_a_well_formed_reading_at_its_policy_passes():
    payload = json.dumps(TELEMETRY).encode()
    assert lint_message(Message("factory/telemetry/press/temperature", payload, 0, False)) == []


def test_a_students_root_and_device_ids_are_honoured():
    assert lint_topic("lab/1a2b/factory/state/press-01", "lab/1a2b/factory", ["press-01"]) == []
    assert [
        f.rule
        for f in lint_topic("lab/1a2b/factory/state/press-02", "lab/1a2b/factory", ["press-01"])
    ] == ["device-id"]


def test_broker_and_scratch_topics_are_not_judged():
    report = lint([Message("$SYS/broker/uptime"), Message("lab/sync/witness/1")])
    assert report.messages == 0 and not report.findings


def test_the_command_prints_each_topic_with_its_rule_and_fails():
    result = subprocess.run(
        [sys.executable, "-m", "mqtt_factory_lab.cli", "lint-topics", str(MISTAKES)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    for case in CASES:
        assert case["topic"] in result.stdout
    assert f"{len({c['topic'] for c in CASES})} break them" in result.stdout


def test_no_broker_is_one_clear_error(nowhere):
    result = subprocess.run(
        [sys.executable, "-m", "mqtt_factory_lab.cli", "lint-topics",
         "--broker-url", f"mqtt://{nowhere.host}:{nowhere.port}", "--for", "1s"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "cannot listen" in result.stderr, result.stderr
