"""``python -m sim.observer``: what arrives, with which QoS and retain flag, and how often.

The observer is the lab's window on the broker. These tests publish known
messages with a test client and read what the observer prints.
"""

from __future__ import annotations

import json
import re
import signal

import pytest

from sim.observer import EXIT_TIMEOUT


@pytest.fixture
def start_observer(sim_program, unique_id):
    """``start_observer(*args)``: a ready ``python -m sim.observer`` with a client id of its own."""
    return lambda *args: sim_program("sim.observer", "--client-id", unique_id("observer"), *args)


def test_text_lines_show_qos_and_retain_flag(topic_root, mqtt_client, start_observer):
    publisher = mqtt_client()
    state_topic = f"{topic_root}/state/press"
    telemetry_topic = f"{topic_root}/telemetry/press/temperature"
    publisher.publish(state_topic, {"state": "running"}, qos=1, retain=True)

    observer = start_observer("--count", "2")
    publisher.publish(telemetry_topic, {"value": 71.5}, qos=0)

    assert observer.wait_exit(10) == 0, observer.describe_failure("should exit 0 after --count 2")
    lines = observer.output().splitlines()
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


def test_subscription_qos_caps_the_delivered_qos(topic_root, mqtt_client, start_observer):
    publisher = mqtt_client()
    topic = f"{topic_root}/alarms/press/temperature"
    observer = start_observer("--qos", "0", "--count", "1", "--no-summary")
    publisher.publish(topic, {"state": "raised"}, qos=1)
    assert observer.wait_exit(10) == 0, observer.describe_failure("should exit after one message")
    assert any(line.startswith(f"[q0 -] {topic}") for line in observer.output().splitlines()), (
        "published at QoS 1 but subscribed at QoS 0: the broker delivers at the lower QoS, 0; "
        f"the observer printed:\n{observer.output()}"
    )


def test_json_lines(topic_root, mqtt_client, start_observer):
    publisher = mqtt_client()
    observer = start_observer("--json", "--count", "2", "--topic", f"{topic_root}/+/x")
    publisher.publish(f"{topic_root}/a/x", {"value": 1}, qos=1)
    publisher.publish(f"{topic_root}/not/matched", "ignored", qos=1)
    publisher.publish(f"{topic_root}/b/x", "plain text", qos=0)
    assert observer.wait_exit(10) == 0, observer.describe_failure("should exit after two messages")

    # Its log lines (stderr, in the same output) start with a timestamp, never with "{".
    objects = [json.loads(line) for line in observer.output().splitlines() if line.startswith("{")]
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


def test_periodic_stats_table_and_clean_exit_on_sigterm(topic_root, mqtt_client, start_observer):
    publisher = mqtt_client()
    topic = f"{topic_root}/telemetry/oven/temperature"
    observer = start_observer("--stats-interval", "0.2")
    for value in range(3):
        publisher.publish(topic, {"value": value}, qos=1)
    observer.wait_for_output(r"^\[q1 -\] .*\"value\":2")

    # Counts are totals, and the summary comes only at exit: a row counting 3 is
    # from a periodic table printed after the three messages.
    observer.wait_for_output(rf"^\s+3\s+\S+\s+\S+\s+{re.escape(topic)}$", timeout=5)
    assert any(line.startswith("--- stats after") for line in observer.output().splitlines()), (
        "a periodic table starts with a '--- stats after <seconds>' title, then one row per "
        f"topic: count, msg/s, recent msg/s, topic. The observer printed:\n{observer.output()}"
    )

    observer.signal(signal.SIGTERM)
    assert observer.wait_exit(10) == 0, observer.describe_failure("should exit 0 on SIGTERM")
    assert any(line.startswith("--- summary") for line in observer.output().splitlines()), (
        "on SIGTERM the observer prints its summary before exiting"
    )


def test_timeout_before_count_exits_3(run_program):
    result = run_program("sim.observer", "--count", "5", "--timeout", "0.3")
    assert result.returncode == EXIT_TIMEOUT, (
        f"no traffic under a fresh root, so --timeout comes first: exit {EXIT_TIMEOUT}; "
        f"got {result.returncode}\n{result.stderr}"
    )
    assert "0 of 5 messages" in result.stderr
