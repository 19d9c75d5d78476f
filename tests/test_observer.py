"""``python -m sim.observer``: what arrives, with which QoS and retain flag, and how often.

The observer is the lab's window on the broker. These tests publish known
messages with a test client and read the observer's stdout.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator

import pytest

from sim.observer import EXIT_TIMEOUT
from sim.run_all import PROJECT_ROOT, Component

StartProgram = Callable[..., Component]


@pytest.fixture
def start_program() -> Iterator[StartProgram]:
    """Start ``python -m <module>`` children; every one is stopped after the test."""
    started: list[Component] = []

    def start(name: str, module: str, args: list[str], env: dict[str, str]) -> Component:
        component = Component(name, module, args, env=env).start()
        started.append(component)
        return component

    yield start
    for component in started:
        component.stop()


def observer_id() -> str:
    return f"observer-test-{uuid.uuid4().hex[:8]}"


def test_text_lines_show_qos_and_retain_flag(broker, broker_env, topic_root, mqtt_client,
                                             start_program):
    publisher = mqtt_client()
    state_topic = f"{topic_root}/state/press"
    telemetry_topic = f"{topic_root}/telemetry/press/temperature"
    publisher.publish(state_topic, {"state": "running"}, qos=1, retain=True)

    observer = start_program(
        "observer", "sim.observer", ["--client-id", observer_id(), "--count", "2"],
        broker_env(broker, topic_root),
    )
    observer.wait_ready()
    publisher.publish(telemetry_topic, {"value": 71.5}, qos=0)

    assert observer.wait(10) == 0, observer.describe("should exit 0 after --count 2")
    lines = observer.lines()
    assert f'[q1 R] {state_topic} {{"state":"running"}}' in lines, (
        "the retained state replayed at subscription should read '[q1 R] <topic> <payload>' "
        "(QoS 1, R = retain flag); the observer printed:\n" + "\n".join(lines)
    )
    assert f'[q0 -] {telemetry_topic} {{"value":71.5}}' in lines, (
        "a live QoS 0 message should read '[q0 -] <topic> <payload>'; the observer printed:\n"
        + "\n".join(lines)
    )
    start = next((i for i, line in enumerate(lines) if line.startswith("--- summary")), None)
    assert start is not None, "the observer prints a summary table when it exits"
    summary = "\n".join(lines[start:])
    assert "2 messages" in summary and state_topic in summary and telemetry_topic in summary, (
        f"the summary at exit should count both topics:\n{summary}"
    )


def test_subscription_qos_caps_the_delivered_qos(broker, broker_env, topic_root, mqtt_client,
                                                  start_program):
    publisher = mqtt_client()
    topic = f"{topic_root}/alarms/press/temperature"
    observer = start_program(
        "observer", "sim.observer",
        ["--client-id", observer_id(), "--qos", "0", "--count", "1", "--no-summary"],
        broker_env(broker, topic_root),
    )
    observer.wait_ready()
    publisher.publish(topic, {"state": "raised"}, qos=1)
    assert observer.wait(10) == 0, observer.describe("should exit after one message")
    assert any(line.startswith(f"[q0 -] {topic}") for line in observer.lines()), (
        "published at QoS 1 but subscribed at QoS 0: the broker delivers at the lower QoS, 0; "
        f"the observer printed {observer.lines()}"
    )


def test_json_lines(broker, broker_env, topic_root, mqtt_client, start_program):
    publisher = mqtt_client()
    observer = start_program(
        "observer", "sim.observer",
        ["--client-id", observer_id(), "--json", "--count", "2", "--topic", f"{topic_root}/+/x"],
        broker_env(broker, topic_root),
    )
    observer.wait_ready()
    publisher.publish(f"{topic_root}/a/x", {"value": 1}, qos=1)
    publisher.publish(f"{topic_root}/not/matched", "ignored", qos=1)
    publisher.publish(f"{topic_root}/b/x", "plain text", qos=0)
    assert observer.wait(10) == 0, observer.describe("should exit after two messages")

    objects = [json.loads(line) for line in observer.lines() if line.startswith("{")]
    messages = [o for o in objects if "topic" in o]
    stats = [o for o in objects if "stats" in o]
    assert [m["topic"] for m in messages] == [f"{topic_root}/a/x", f"{topic_root}/b/x"], (
        "--topic replaces the default <root>/# filter, so only the two matching messages "
        f"should be printed: {messages}"
    )
    first, second = messages
    assert set(first) == {"ts", "topic", "qos", "retain", "payload"}
    assert first["payload"] == {"value": 1} and first["qos"] == 1 and first["retain"] is False
    assert second["payload"] == "plain text", "a payload that is not JSON is kept as a string"
    assert len(stats) == 1 and stats[0]["stats"]["final"] is True, (
        f"in --json mode the summary is one object with a 'stats' key: {stats}"
    )
    assert stats[0]["stats"]["total"] == 2


def test_periodic_stats_table_and_clean_exit_on_sigterm(broker, broker_env, topic_root,
                                                        mqtt_client, start_program):
    publisher = mqtt_client()
    topic = f"{topic_root}/telemetry/oven/temperature"
    observer = start_program(
        "observer", "sim.observer", ["--client-id", observer_id(), "--stats-interval", "0.2"],
        broker_env(broker, topic_root),
    )
    observer.wait_ready()
    for value in range(3):
        publisher.publish(topic, {"value": value}, qos=1)
    observer.wait_for_line(r"^\[q1 -\] .*\"value\":2")

    # A periodic table after the three messages: its row for the topic counts 3.
    mark = len(observer.lines())
    observer.wait_for_line(r"^--- stats after", timeout=5, since=mark)
    row = observer.wait_for_line(
        rf"^\s+3\s+\S+\s+\S+\s+{re.escape(topic)}$", timeout=5, since=mark
    )
    assert row, "the stats table has one row per topic: count, msg/s, recent msg/s, topic"

    observer.signal(signal.SIGTERM)
    assert observer.wait(10) == 0, observer.describe("should exit 0 on SIGTERM")
    assert any(line.startswith("--- summary") for line in observer.lines()), (
        "on SIGTERM the observer prints its summary before exiting"
    )


def test_timeout_before_count_exits_3(broker, broker_env, topic_root):
    result = subprocess.run(
        [sys.executable, "-m", "sim.observer", "--count", "5", "--timeout", "0.3"],
        env=broker_env(broker, topic_root), cwd=PROJECT_ROOT,
        capture_output=True, text=True, timeout=20,
    )
    assert result.returncode == EXIT_TIMEOUT, (
        f"no traffic under a fresh root, so --timeout comes first: exit {EXIT_TIMEOUT}; "
        f"got {result.returncode}\n{result.stderr}"
    )
    assert "0 of 5 messages" in result.stderr
