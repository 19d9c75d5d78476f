"""``python -m sim.cli pub`` / ``sub``: the mosquitto_pub / mosquitto_sub of the lab.

Each test runs the real program against a real broker and checks what a
student would see: the message on the other side, its flags, and the exit
status a script can rely on (see the table in ``sim/cli.py``).
"""

from __future__ import annotations

import json

import pytest

from sim.cli import EXIT_CONNECT, EXIT_OK, EXIT_REFUSED, EXIT_TIMEOUT


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_pub_reaches_a_running_sub(topic_root, sim_program, run_program, protocol):
    topic = f"{topic_root}/greeting"
    # Returns after the ready line: the SUBACK is in, a message published now is delivered.
    sub = sim_program(
        "sim.cli", "sub", "--topic", topic, "--qos", "1", "--count", "1", "-v", protocol=protocol
    )

    message = ["--message", "hello press", "--qos", "1"]
    pub = run_program("sim.cli", "pub", "--topic", topic, *message, protocol=protocol)
    assert pub.returncode == EXIT_OK, (
        f"`cli pub` at QoS 1 should exit {EXIT_OK} once the broker acknowledged; it exited "
        f"{pub.returncode}.\nstderr:\n{pub.stderr}"
    )
    assert sub.wait_exit(10) == EXIT_OK, sub.describe_failure("should exit 0 after one message")
    assert f"{topic} hello press" in sub.output().splitlines(), (
        f"`cli sub -v` should print 'topic payload'; it printed:\n{sub.output()}"
    )


def test_retained_message_reaches_a_later_sub_and_null_clears_it(
    topic_root, mqtt_client, run_program
):
    topic = f"{topic_root}/state/press"
    state = '{"state": "running"}'
    pub = run_program("sim.cli", "pub", "-t", topic, "-m", state, "--qos", "1", "--retain")
    assert pub.returncode == EXIT_OK, pub.stderr

    # Subscribed only now: the broker replays the retained message, flagged as such.
    sub = run_program(
        "sim.cli", "sub", "-t", topic, "--qos", "1", "--count", "1", "--json", "--timeout", "10"
    )
    assert sub.returncode == EXIT_OK, f"sub got no retained message:\n{sub.stderr}"
    records = [json.loads(line) for line in sub.stdout.splitlines() if line.startswith("{")]
    assert len(records) == 1, f"expected one JSON line after the ready line: {sub.stdout!r}"
    record = records[0]
    assert record["topic"] == topic
    assert record["retain"] is True, "a message replayed from the retained store has retain=1"
    assert record["qos"] == 1
    assert record["payload"] == {"state": "running"}, "--json parses a JSON payload"
    assert isinstance(record["ts"], float)

    cleared = run_program("sim.cli", "pub", "-t", topic, "--null", "--retain", "--qos", "1")
    assert cleared.returncode == EXIT_OK, cleared.stderr
    late = mqtt_client()
    late.subscribe(topic, qos=1)
    late.assert_nothing_received(
        topic, why="a zero-length retained publish (`--null --retain`) deletes the retained message"
    )


def test_sub_exits_3_when_count_not_reached_before_timeout(topic_root, run_program):
    sub = run_program(
        "sim.cli", "sub", "-t", f"{topic_root}/silence", "--count", "1", "--timeout", "0.5"
    )
    assert sub.returncode == EXIT_TIMEOUT, (
        f"nobody publishes there, so --timeout should end the sub with {EXIT_TIMEOUT}; "
        f"got {sub.returncode}\n{sub.stderr}"
    )
    assert "timeout" in sub.stderr


def test_sub_without_count_ends_at_timeout_with_0(topic_root, run_program):
    sub = run_program("sim.cli", "sub", "-t", f"{topic_root}/silence", "--timeout", "0.3")
    assert sub.returncode == EXIT_OK, sub.stderr


def test_pub_to_unreachable_broker_fails_with_a_clear_error(nowhere, unique_id, run_program):
    args = ["-t", "factory/x", "-m", "x", "--client-id", unique_id("pub")]
    result = run_program("sim.cli", "pub", *args, broker=nowhere)
    assert result.returncode == EXIT_CONNECT, result.stderr
    assert f"127.0.0.1:{nowhere.port}" in result.stderr and "VF_BROKER_PORT" in result.stderr, (
        f"the error should name the address tried and how to change it:\n{result.stderr}"
    )
    assert "Traceback" not in result.stderr


def test_pub_refused_by_acl_exits_4_with_the_reason(make_broker, run_program):
    acl = make_broker("acl")
    as_dashboard = ["--client-id", "dashboard", "-m", '{"command": "stop"}', "--qos", "1"]
    topic = "factory/commands/controller/press"
    result = run_program(
        "sim.cli", "pub", "-t", topic, *as_dashboard, broker=acl, topic_root="factory"
    )
    assert result.returncode == EXIT_REFUSED, (
        "dashboard may publish only under factory/commands/dashboard/#, so the broker "
        f"answers PUBACK 135 and the cli exits {EXIT_REFUSED}; got {result.returncode}\n"
        f"{result.stderr}"
    )
    assert "Not authorized" in result.stderr and "135" in result.stderr

    topic = "factory/commands/dashboard/press"
    allowed = run_program(
        "sim.cli", "pub", "-t", topic, *as_dashboard, broker=acl, topic_root="factory"
    )
    assert allowed.returncode == EXIT_OK, allowed.stderr


def test_help_works(nowhere, run_program):
    result = run_program("sim.cli", "sub", "--help", broker=nowhere)
    assert result.returncode == 0 and "--count" in result.stdout
