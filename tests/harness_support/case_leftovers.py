"""Run by tests/test_harness.py in a child pytest: tests that end badly while brokers run.

Each test starts the shared broker, a dedicated one and a role or two, and
writes their PIDs to ``$LAB_READY_FILE``. One then fails; the other blocks
until the parent interrupts it (SIGINT, SIGTERM) or pytest-timeout expires.
The parent then checks that none of these processes is left.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mqtt_factory_lab.core.roles import RoleProcess

# A program that says it is ready, then blocks until a signal ends it.
SLEEPER = "import signal; print('ready', flush=True); signal.pause()"


@pytest.fixture
def sleeper() -> Iterator[RoleProcess]:
    """A factory role that would run for two minutes; $LAB_MARKER on its command line."""
    role = RoleProcess(
        "device", "sleeper", [sys.executable, "-c", SLEEPER, os.environ["LAB_MARKER"]]
    )
    with role:
        role.wait_for_output("^ready$")
        yield role


def report_pids(*pids: int | None) -> None:
    ready = Path(os.environ["LAB_READY_FILE"])
    partial = ready.with_suffix(".partial")
    partial.write_text(json.dumps([pid for pid in pids if pid]))
    partial.rename(ready)  # the parent never reads a half-written file


def test_fails_while_brokers_and_roles_run(broker, make_broker, sleeper, device):
    dedicated = make_broker("acl+persistent")
    press = device("press")
    report_pids(broker.pid, dedicated.pid, sleeper.pid, press.process.pid)
    assert broker.is_running() and dedicated.is_running()
    raise AssertionError("this test fails on purpose, with two brokers and a role running")


def test_blocks_until_stopped(broker, make_broker, sleeper):
    dedicated = make_broker("persistent")
    report_pids(broker.pid, dedicated.pid, sleeper.pid)
    threading.Event().wait(60)
