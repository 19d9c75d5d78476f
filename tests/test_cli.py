"""``python -m sim.cli pub`` / ``sub``: the mosquitto_pub / mosquitto_sub of the lab.

Each test runs the real program against a real broker and checks what a
student would see: the message on the other side, its flags, and the exit
status a script can rely on (see the table in ``sim/cli.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator

import pytest

from harness.brokers.base import free_port
from sim.cli import EXIT_CONNECT, EXIT_OK, EXIT_REFUSED, EXIT_TIMEOUT
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


def run_cli(args: list[str], env: dict[str, str], timeout: float = 20.0) -> subprocess.CompletedProcess:
    """Run the cli to completion (a pub, or a sub that must end by itself)."""
    return subprocess.run(
        [sys.executable, "-m", "sim.cli", *args],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_pub_reaches_a_running_sub(broker, broker_env, topic_root, start_program, protocol):
    env = broker_env(broker, topic_root, protocol)
    topic = f"{topic_root}/greeting"
    sub = start_program(
        "sub", "sim.cli", ["sub", "--topic", topic, "--qos", "1", "--count", "1", "-v"], env
    )
    sub.wait_ready()  # the SUBACK is in: a message published now will be delivered

    pub = run_cli(["pub", "--topic", topic, "--message", "hello press", "--qos", "1"], env)
    assert pub.returncode == EXIT_OK, (
        f"`cli pub` at QoS 1 should exit {EXIT_OK} once the broker acknowledged; it exited "
        f"{pub.returncode}.\nstderr:\n{pub.stderr}"
    )
    assert sub.wait(10) == EXIT_OK, sub.describe("should exit 0 after --count 1 message")
    assert f"{topic} hello press" in sub.lines(), (
        f"`cli sub -v` should print 'topic payload'; it printed {sub.lines()}"
    )


def test_retained_message_reaches_a_later_sub_and_null_clears_it(
    broker, broker_env, topic_root, mqtt_client
):
    env = broker_env(broker, topic_root)
    topic = f"{topic_root}/state/press"
    state = '{"state": "running"}'
    pub = run_cli(["pub", "-t", topic, "-m", state, "--qos", "1", "--retain"], env)
    assert pub.returncode == EXIT_OK, pub.stderr

    # Subscribed only now: the broker replays the retained message, flagged as such.
    sub = run_cli(["sub", "-t", topic, "--qos", "1", "--count", "1", "--json", "--timeout", "10"], env)
    assert sub.returncode == EXIT_OK, f"sub got no retained message:\n{sub.stderr}"
    records = [json.loads(line) for line in sub.stdout.splitlines() if line.startswith("{")]
    assert len(records) == 1, f"expected one JSON line after the ready line: {sub.stdout!r}"
    record = records[0]
    assert record["topic"] == topic
    assert record["retain"] is True, "a message replayed from the retained store has retain=1"
    assert record["qos"] == 1
    assert record["payload"] == {"state": "running"}, "--json parses a JSON payload"
    assert isinstance(record["ts"], float)

    cleared = run_cli(["pub", "-t", topic, "--null", "--retain", "--qos", "1"], env)
    assert cleared.returncode == EXIT_OK, cleared.stderr
    late = mqtt_client()
    late.subscribe(topic, qos=1)
    late.assert_nothing_received(
        topic, why="a zero-length retained publish (`--null --retain`) deletes the retained message"
    )


def test_sub_exits_3_when_count_not_reached_before_timeout(broker, broker_env, topic_root):
    env = broker_env(broker, topic_root)
    sub = run_cli(["sub", "-t", f"{topic_root}/silence", "--count", "1", "--timeout", "0.5"], env)
    assert sub.returncode == EXIT_TIMEOUT, (
        f"nobody publishes there, so --timeout should end the sub with {EXIT_TIMEOUT}; "
        f"got {sub.returncode}\n{sub.stderr}"
    )
    assert "timeout" in sub.stderr


def test_sub_without_count_ends_at_timeout_with_0(broker, broker_env, topic_root):
    env = broker_env(broker, topic_root)
    sub = run_cli(["sub", "-t", f"{topic_root}/silence", "--timeout", "0.3"], env)
    assert sub.returncode == EXIT_OK, sub.stderr


def test_pub_to_unreachable_broker_fails_with_a_clear_error():
    port = free_port()  # nothing listens here
    env = dict(os.environ, VF_BROKER_HOST="127.0.0.1", VF_BROKER_PORT=str(port))
    result = run_cli(["pub", "-t", "factory/x", "-m", "x", "--client-id", uid("pub")], env)
    assert result.returncode == EXIT_CONNECT, result.stderr
    assert f"127.0.0.1:{port}" in result.stderr and "VF_BROKER_PORT" in result.stderr, (
        f"the error should name the address tried and how to change it:\n{result.stderr}"
    )
    assert "Traceback" not in result.stderr


def test_pub_refused_by_acl_exits_4_with_the_reason(broker_factory, broker_env):
    acl = broker_factory("acl")
    env = broker_env(acl, "factory")
    result = run_cli(
        ["pub", "--client-id", "dashboard", "-t", "factory/commands/controller/press",
         "-m", '{"command": "stop"}', "--qos", "1"],
        env,
    )
    assert result.returncode == EXIT_REFUSED, (
        "dashboard may publish only under factory/commands/dashboard/#, so the broker "
        f"answers PUBACK 135 and the cli exits {EXIT_REFUSED}; got {result.returncode}\n"
        f"{result.stderr}"
    )
    assert "Not authorized" in result.stderr and "135" in result.stderr

    allowed = run_cli(
        ["pub", "--client-id", "dashboard", "-t", "factory/commands/dashboard/press",
         "-m", '{"command": "stop"}', "--qos", "1"],
        env,
    )
    assert allowed.returncode == EXIT_OK, allowed.stderr


def test_help_works():
    result = subprocess.run(
        [sys.executable, "-m", "sim.cli", "sub", "--help"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=20,
    )
    assert result.returncode == 0 and "--count" in result.stdout
