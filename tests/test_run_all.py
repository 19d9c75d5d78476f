"""``python -m sim.run_all``: the whole factory starts, runs and stops without leftovers.

A factory that leaves a simulator running after Ctrl-C poisons the next
lesson (its retained messages and client ids are still on the broker), so
these tests record every child's PID and check that each one is gone.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import urllib.request

import psutil
import pytest

from mqtt_factory_lab.brokers.base import free_port
from mqtt_factory_lab.core.process import ProcessTimeout, wait_until
from sim.connection import BrokerSettings
from sim.run_all import DEVICE_KINDS, Programs, build_parser, plan

STARTED = re.compile(r"^run_all: started (\S+) as pid (\d+)$")


def start_time(pid: int) -> float | None:
    """When a live (non-zombie) process started, or None when it is gone.

    Comparing it later tells our process from a new one that reused the PID.
    """
    try:
        process = psutil.Process(pid)
        return None if process.status() == psutil.STATUS_ZOMBIE else process.create_time()
    except psutil.NoSuchProcess:
        return None


def parent_of(pid: int) -> int | None:
    try:
        return psutil.Process(pid).ppid()
    except psutil.NoSuchProcess:
        return None


def children(lines: list[str]) -> dict[str, int]:
    """The ``started <name> as pid <n>`` lines run_all logged, as {name: pid}."""
    return {m.group(1): int(m.group(2)) for m in map(STARTED.match, lines) if m}


def assert_all_gone(started: dict[str, tuple[int, float | None]]) -> None:
    left = {
        name: pid
        for name, (pid, when) in started.items()
        if when is not None and start_time(pid) == when
    }
    assert not left, f"run_all left these programs running after it exited: {left}"


@pytest.fixture
def run_all(sim_program):
    """``run_all(*args)``: a ready ``python -m sim.run_all``.

    At the end of the test it has 15 s after SIGTERM to stop its children
    before it is killed (which would leave them running).
    """
    return lambda *args: sim_program("sim.run_all", *args, ready_timeout=40, stop_timeout=15)


def test_factory_starts_then_stops_cleanly_even_after_a_crash(topic_root, mqtt_client, run_all):
    watch = mqtt_client()
    watch.subscribe(f"{topic_root}/status/+", qos=1)
    port = free_port()
    factory = run_all("--time-scale", "10", "--stop-timeout", "5", "--http-port", str(port))
    lines = factory.output().splitlines()
    assert "ready run_all" in lines, factory.output()
    # The dashboard is part of the factory, as in the seed's start script, and run_all says where.
    address = f"run_all: dashboard at http://127.0.0.1:{port}/"
    assert address in lines and lines.index(address) < lines.index("ready run_all"), lines
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as page:
        assert page.status == 200 and b"static/app.js" in page.read()

    # Its own log lines start with "run_all: "; its children's are forwarded as "name | ...".
    pids = children(factory.output().splitlines())
    assert set(pids) == {"observer", "controller", "dashboard", *DEVICE_KINDS}, (
        f"run_all should start the observer, the controller, the dashboard and one device "
        f"per kind: {pids}"
    )
    for name, pid in pids.items():
        assert parent_of(pid) == factory.pid, f"{name} (pid {pid}) is not a child of run_all"
    started = {name: (pid, start_time(pid)) for name, pid in pids.items()}
    for kind in DEVICE_KINDS:
        status = watch.wait_for_message(
            lambda m, k=kind: m.topic.endswith(f"/status/{k}") and m.json()["status"] == "online"
        )
        assert status.json()["device_id"] == kind

    # A device crashes: run_all reports it and keeps the rest running.
    os.kill(pids["press"], signal.SIGKILL)
    factory.wait_for_output(r"press \(pid \d+\) exited by itself", timeout=10)
    assert factory.is_running(), factory.describe_failure("should survive the crash of one device")

    factory.signal(signal.SIGTERM)
    assert factory.wait_exit(30) == 0, factory.describe_failure("should exit 0 after SIGTERM")
    assert_all_gone(started)
    for kind in DEVICE_KINDS:
        if kind == "press":
            continue
        watch.wait_for_message(
            lambda m, k=kind: m.topic.endswith(f"/status/{k}") and m.json()["status"] == "offline"
        )
    stopped = [line for line in factory.output().splitlines() if "stopped (status" in line]
    order = [line.split()[1] for line in stopped]
    assert order.index("controller") > max(order.index(k) for k in DEVICE_KINDS if k != "press")
    assert set(order[-2:]) == {"observer", "dashboard"}, (
        f"devices stop first, the observer and the dashboard last: {order}"
    )


def test_ctrl_c_stops_everything(run_all):
    factory = run_all("--devices", "conveyor,oven", "--no-observer", "--no-dashboard")
    pids = children(factory.output().splitlines())
    assert set(pids) == {"controller", "conveyor", "oven"}
    assert "dashboard at" not in factory.output()
    started = {name: (pid, start_time(pid)) for name, pid in pids.items()}
    factory.signal(signal.SIGINT)
    assert factory.wait_exit(30) == 0, factory.describe_failure(
        "should exit 0 after Ctrl-C (SIGINT)"
    )
    assert_all_gone(started)


def test_duration_ends_the_run(run_all):
    factory = run_all("--devices", "press", "--no-observer", "--no-dashboard", "--duration", "0.5")
    started = {n: (p, start_time(p)) for n, p in children(factory.output().splitlines()).items()}
    assert factory.wait_exit(30) == 0, factory.describe_failure(
        "should stop by itself after --duration"
    )
    assert any(line.startswith("run_all: --duration") for line in factory.output().splitlines())
    assert_all_gone(started)


def test_a_component_that_cannot_start_is_named_with_its_output(nowhere, run_program):
    # No broker there: the first programs cannot connect.
    result = run_program(
        "sim.run_all", "--ready-timeout", "20", "--http-port", "0", broker=nowhere, timeout=60
    )
    assert result.returncode == 1, f"expected exit 1, got {result.returncode}\n{result.stderr}"
    assert "observer exited before printing its 'ready' line" in result.stderr, result.stderr
    assert f"cannot reach the MQTT broker at 127.0.0.1:{nowhere.port}" in result.stderr, (
        "the error should quote the failing program's own output"
    )
    pids = children(result.stderr.splitlines())
    assert "observer" in pids
    for name, pid in pids.items():
        assert start_time(pid) is None, f"{name} (pid {pid}) still runs after run_all gave up"


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux setpriv (Linux)")
def test_children_stop_even_when_run_all_is_killed(run_all):
    factory = run_all("--devices", "press", "--no-observer", "--http-port", str(free_port()))
    pids = children(factory.output().splitlines())
    assert "dashboard" in pids, pids
    started = {name: (pid, start_time(pid)) for name, pid in pids.items()}

    factory.kill()  # SIGKILL: run_all gets no chance to stop anything

    def all_gone() -> bool:
        return not any(when is not None and start_time(p) == when for p, when in started.values())

    with contextlib.suppress(ProcessTimeout):
        wait_until(all_gone, 10, interval=0.05)
    assert_all_gone(started)


def test_children_get_all_connection_settings_through_vf_variables_never_on_argv():
    """Every setting reaches the children (TLS too), and a password never sits on a command line."""
    args = build_parser().parse_args(
        [
            *("--password", "s3cret", "--username", "line-7", "--tls-ca", "/ca.pem"),
            *("--tls-cert", "/client.pem", "--tls-key", "/client.key", "--port", "8883"),
        ]
    )
    programs = Programs(args, lambda *line: None, BrokerSettings.from_args(args))
    assert {
        name: programs.env.get(name)
        for name in ("VF_PASSWORD", "VF_USERNAME", "VF_TLS_CA", "VF_TLS_CERT", "VF_TLS_KEY")
    } == {
        "VF_PASSWORD": "s3cret",
        "VF_USERNAME": "line-7",
        "VF_TLS_CA": "/ca.pem",
        "VF_TLS_CERT": "/client.pem",
        "VF_TLS_KEY": "/client.key",
    }
    assert programs.env["VF_BROKER_PORT"] == "8883"
    for name, _module, argv in plan(args):
        assert "s3cret" not in argv, f"{name} would show the password to `ps`: {argv}"


def test_a_password_given_to_run_all_is_not_visible_in_any_process_list(run_all):
    factory = run_all(
        *("--devices", "press", "--no-observer", "--http-port", str(free_port())),
        *("--username", "u", "--password", "pw-0xC0FFEE"),
    )
    pids = children(factory.output().splitlines())
    assert set(pids) == {"controller", "dashboard", "press"}, factory.output()
    for name, pid in pids.items():
        command = psutil.Process(pid).cmdline()
        assert not any("pw-0xC0FFEE" in part for part in command), f"{name}: {command}"
        assert psutil.Process(pid).environ().get("VF_PASSWORD") == "pw-0xC0FFEE", name


def test_the_factory_runs_under_docker_acl_with_nothing_denied(sim_program, make_broker):
    """The compose broker's ACL: the observer and the controller read as their user names."""
    broker = make_broker("acl")
    mark = broker.log_mark()
    factory = sim_program(
        "sim.run_all",
        *("--devices", "press,conveyor", "--no-dashboard", "--anomaly", "--time-scale", "60"),
        broker=broker,
        topic_root="factory",
        ready_timeout=40,
        stop_timeout=15,
    )
    factory.wait_for_output(r"^observer\s+\| .*factory/telemetry/press/", timeout=15)
    factory.wait_for_output(r"^observer\s+\| .*factory/alarms/", timeout=20)
    denied = [line for line in broker.log_lines()[mark:] if "Denied" in line]
    assert not denied, "run_all must work within docker/acl:\n" + "\n".join(denied[:5])
