"""The instruments of lessons 04 and 05's runs that wait on the broker's clock
(:mod:`mqtt_factory_lab.experiment.ahead`, and the runs in ``experiment.wills`` and
``experiment.sessions``): each does what its lesson relies on, and fails as it says.

The waits themselves (a keepalive sweep, a will delay) are the lessons' to judge, with their
broken variants in ``tests/broken/lesson04_*`` and ``lesson05_*``; here every check is quick.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from mqtt_factory_lab.brokers import BrokerError
from mqtt_factory_lab.core.factory import DeviceHandle
from mqtt_factory_lab.core.process import ChildProcess, ProcessTimeout, wait_until
from mqtt_factory_lab.core.roles import RoleError, RoleProcess
from mqtt_factory_lab.experiment.ahead import (
    Ahead,
    AheadCases,
    ModuleClients,
    per_protocol,
    seconds_left,
    start_ahead,
    users,
)
from mqtt_factory_lab.experiment.sessions import DroppedDevice, leave_with_expiry
from mqtt_factory_lab.experiment.wills import Silence, lose_connections

LESSON = Path("/lab/labs/04_lwt.py")


def sleeper() -> ChildProcess:
    return ChildProcess([sys.executable, "-c", "import time; time.sleep(60)"], name="sleeper")


def state_of(program: ChildProcess) -> str:
    """The process state letter from /proc (``T``: stopped)."""
    return Path(f"/proc/{program.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


# -- Ahead -----------------------------------------------------------------------------------


def test_ahead_returns_the_run_and_undoes_it_at_close() -> None:
    undone: list[str] = []

    def start(stack: contextlib.ExitStack) -> str:
        stack.callback(undone.append, "closed")
        return "run"

    with Ahead(start) as run:
        assert run.result() == "run"
        assert run.result() == "run", "every judging experiment gets the same run"
        assert undone == []
    assert undone == ["closed"]


def test_ahead_keeps_a_failure_for_the_experiment_that_judges_it() -> None:
    def start(stack: contextlib.ExitStack) -> None:
        raise ValueError("the run could not start")

    run = Ahead(start)  # constructing it raises nothing: the first experiment is not to blame
    with pytest.raises(ValueError, match="could not start"):
        run.result()
    run.close()


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (RoleError("the device role (oven) exited"), "the device role (oven) exited"),
        (BrokerError("port 1883 in use"), "the broker could not start:\nport 1883 in use"),
    ],
)
def test_ahead_fails_with_a_programs_or_brokers_message_alone(error, message) -> None:
    def start(stack: contextlib.ExitStack) -> None:
        raise error

    with Ahead(start) as run, pytest.raises(pytest.fail.Exception) as failed:
        run.result()
    assert str(failed.value) == message
    assert not failed.value.pytrace, "no harness traceback under the lesson's message"


def test_programs_started_ahead_live_until_the_run_closes() -> None:
    # Programs get SIGTERM when the thread that started them ends (setpriv --pdeathsig):
    # the run's thread must outlive the start.
    with Ahead(lambda stack: stack.enter_context(sleeper())) as run:
        program = run.result()
        with pytest.raises(ProcessTimeout):
            wait_until(lambda: not program.is_running(), timeout=0.5)
    assert not program.is_running()


def test_seconds_left_counts_from_the_runs_own_moment() -> None:
    now = time.monotonic()
    assert 4.5 <= seconds_left(now - 1, 6) <= 5.0
    assert seconds_left(now - 60, 6) == 0.1, "a deadline long past still waits a moment"


# -- which runs to start ---------------------------------------------------------------------


def item(path: Path, fixtures: tuple[str, ...], protocol: str | None = None) -> SimpleNamespace:
    params = {"protocol": protocol} if protocol else {}
    return SimpleNamespace(
        path=path, fixturenames=fixtures, callspec=SimpleNamespace(params=params)
    )


def test_users_are_the_selected_experiments_of_the_module_that_use_the_fixture() -> None:
    other = Path("/lab/labs/05_sessions.py")
    mine = item(LESSON, ("broker", "silent_clients"))
    items = [mine, item(LESSON, ("broker",)), item(other, ("silent_clients",))]
    request = SimpleNamespace(session=SimpleNamespace(items=items), path=LESSON)

    assert users(request, "silent_clients") == [mine]
    assert users(request, "paused_ovens") == []


def test_start_ahead_sets_up_only_the_fixtures_a_selected_experiment_uses() -> None:
    started: list[str] = []
    items = [item(LESSON, ("silent_clients",))]
    request = SimpleNamespace(
        session=SimpleNamespace(items=items), path=LESSON, getfixturevalue=started.append
    )

    start_ahead(request, "silent_clients", "paused_ovens")

    assert started == ["silent_clients"]


def test_per_protocol_starts_one_run_per_selected_mqtt_version() -> None:
    items = [item(LESSON, ("dropped",), "5"), item(LESSON, ("dropped",), "5")]
    request = SimpleNamespace(
        session=SimpleNamespace(items=items), path=LESSON, fixturename="dropped"
    )

    runs = per_protocol(request, lambda stack, protocol: f"press on MQTT {protocol}")

    assert {p: r.result() for p, r in runs.items()} == {"5": "press on MQTT 5"}
    for run in runs.values():
        run.close()


# -- the runs ---------------------------------------------------------------------------------


def test_module_clients_connect_with_their_names_and_all_disconnect(broker) -> None:
    clients = ModuleClients(broker, "lab-test ahead")
    first, second = clients(), clients(protocol="3.1.1", connect=False)

    assert first.connected and not second.connected
    assert first.client_id.startswith("lab-test-ahead-1-")
    clients.close()
    assert not first.connected


def test_silence_pauses_every_program_at_one_moment() -> None:
    programs = {"5": sleeper().start(), "3.1.1": sleeper().start()}
    silence = Silence(dashboard=None, programs=programs)  # type: ignore[arg-type]
    try:
        before = time.monotonic()
        silence.pause()

        assert before <= silence.paused_at <= time.monotonic()
        for program in programs.values():
            wait_until(lambda p=program: state_of(p) == "T", timeout=5)
    finally:
        for program in programs.values():
            program.close()  # SIGCONT with the SIGTERM


def test_lose_connections_drops_both_and_brings_one_back_to_its_session(broker) -> None:
    with contextlib.ExitStack() as stack:
        hiccup = lose_connections(stack, broker, "conveyor-01", "packer-01", delay=60)

        assert hiccup.back.connected and hiccup.back.connack["session_present"]
        assert hiccup.returning.endswith("/status/conveyor-01")
        assert hiccup.gone.endswith("/status/packer-01")
        assert hiccup.dropped_at <= time.monotonic()
        hiccup.dashboard.assert_nothing_received(why="a will delay of 60 s has not passed")


def test_leave_with_expiry_leaves_a_session_the_broker_ends(broker) -> None:
    with contextlib.ExitStack() as stack:
        run = leave_with_expiry(stack, broker, expiry=1)

        ended = run.watcher.wait_for_message(run.ended_topic, timeout=5)
        assert ended.payload == b"session ended"
        assert time.monotonic() - run.left_at >= 0


class FakeLog:
    """A broker whose log says what the test wants."""

    capabilities = frozenset()

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def log_lines(self) -> list[str]:
        return self.lines


def dropped(lines: list[str]) -> DroppedDevice:
    press = DeviceHandle("press", "press-01", "press-01-abc", None, "lab/x/factory")  # type: ignore[arg-type]
    return DroppedDevice(press, FakeLog(lines), None, None, "c", "s", 0, 0.0)  # type: ignore[arg-type]


def test_dropped_device_reads_its_reconnection_and_subscriptions_from_the_log() -> None:
    takeover = "New client connected from 127.0.0.1:1 as press-01-abc (p2, c1, k60, u'x')."
    own = "New client connected from 127.0.0.1:2 as press-01-abc (p4, c1, k60)."
    run = dropped([takeover, "noise"])
    assert run.reconnected() is None, "the takeover is not the device's own reconnection"

    run.broker.lines += [own]
    assert run.reconnected() == 3
    assert "clean session = 1" in run.no_subscribe_evidence(3, "3.1.1")
    assert "SUBSCRIBE" in run.no_subscribe_evidence(3, "3.1.1")

    run.broker.lines += ["1700000000: press-01-abc 1 lab/x/factory/commands/+/press-01"]
    assert run.subscribed_since(3)
    assert run.no_subscribe_evidence(3, "3.1.1") == ""


def test_dropped_device_that_never_reconnects_fails_with_its_output() -> None:
    program = RoleProcess("device", "press-01", [sys.executable, "-c", "print('bye')"]).start()
    program.wait_exit(10)
    run = dropped([])
    run.press.process = program
    try:
        with pytest.raises(pytest.fail.Exception, match="never reconnected within 15 s"):
            run.wait_reconnected(0.2)
    finally:
        program.close()


# -- AheadCases --------------------------------------------------------------------------------


def cases_request(items: list, *, worker: bool = False) -> SimpleNamespace:
    config = SimpleNamespace(workerinput={}) if worker else SimpleNamespace()
    return SimpleNamespace(session=SimpleNamespace(items=items), path=LESSON, config=config)


def repetition(n: int, fixtures: tuple[str, ...] = ("outage",)) -> SimpleNamespace:
    return SimpleNamespace(
        path=LESSON, fixturenames=fixtures, callspec=SimpleNamespace(params={"lab_repetition": n})
    )


def test_ahead_cases_give_each_repetition_a_run_of_its_own() -> None:
    started: list[dict] = []
    closed: list[dict] = []

    def start(stack: contextlib.ExitStack, params: dict) -> dict:
        started.append(params)
        stack.callback(closed.append, params)
        return params

    cases = AheadCases(cases_request([repetition(1), repetition(2)]), {"outage": start})
    cases.start_selected()
    first = cases.start("outage", {"lab_repetition": 1})
    assert cases.start("outage", {"lab_repetition": 1}) == first, "a case starts once"
    assert cases.run(first).result() == {"lab_repetition": 1}
    second = cases.start("outage", {"lab_repetition": 2})
    assert cases.run(second).result() == {"lab_repetition": 2}
    assert sorted(p["lab_repetition"] for p in started) == [1, 2]

    cases.finish(first).join()
    assert closed == [{"lab_repetition": 1}], "finish closes that run alone"
    cases.close()
    assert len(closed) == 2, "close waits until every run is closed"


def test_ahead_cases_start_nothing_ahead_on_an_xdist_worker() -> None:
    started: list[dict] = []
    request = cases_request([repetition(1)], worker=True)
    cases = AheadCases(request, {"outage": lambda stack, p: started.append(p)})
    cases.start_selected()
    assert started == [] and not cases._runs, "another worker may judge the sibling cases"
    cases.close()


def test_ahead_cases_set_up_at_most_at_once_runs_together() -> None:
    import threading

    busy, most = [0], [0]
    lock = threading.Lock()

    def start(stack: contextlib.ExitStack, params: dict) -> None:
        with lock:
            busy[0] += 1
            most[0] = max(most[0], busy[0])
        time.sleep(0.05)  # a run setting itself up: the slots are what is measured
        with lock:
            busy[0] -= 1

    items = [repetition(n) for n in range(6)]
    cases = AheadCases(cases_request(items), {"outage": start}, at_once=2)
    cases.start_selected()
    for n in range(6):
        cases.run(cases.start("outage", {"lab_repetition": n})).result()
    cases.close()
    assert most[0] <= 2
