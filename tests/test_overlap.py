"""Several lessons in one serial session (``mqtt_factory_lab/fixtures/overlap.py``): the runs
started ahead live for the session, the experiments that judge them run last, and nothing the
runs started is left running, after a pass, a failure or Ctrl-C.

The child sessions run two tiny lessons whose run started ahead is a sleeping program: quick,
and its PID says whether it is still running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from mqtt_factory_lab.core.process import wait_until
from mqtt_factory_lab.experiment.ahead import GRADING_CHILD, JUDGING, ahead_scope
from mqtt_factory_lab.fixtures.overlap import verdicts_last

REPO = Path(__file__).resolve().parents[1]

LESSON = """
import os, sys
import pytest
from mqtt_factory_lab.core.process import ChildProcess
from mqtt_factory_lab.experiment.ahead import Ahead, ahead_scope, judged_by, start_ahead

pytestmark = pytest.mark.lesson({number})


def sleeper(stack):
    program = stack.enter_context(
        ChildProcess([sys.executable, "-c", "import time; time.sleep(60)"], name="sleeper")
    )
    with open(os.environ["PIDS"], "a") as pids:
        pids.write(f"{{program.pid}}\\n")
    return program


@pytest.fixture(scope=ahead_scope)
def slow_run():
    with Ahead(sleeper) as run:
        yield run


judged_by("slow_run")


@pytest.fixture(scope="module", autouse=True)
def _runs_started_ahead(request):
    start_ahead(request, "slow_run")


def test_first():
    pass


def test_judges_the_run(slow_run):
    assert slow_run.result().is_running(), "the run is still open when its verdict comes"
    assert not os.environ.get("FAIL"), "the verdict fails, as a broken solution would"


def test_last():
    if os.environ.get("HANG") and {number} == 2:
        import pathlib, time

        pathlib.Path(os.environ["PIDS"] + ".hanging").touch()  # for the test to wait on
        time.sleep(60)  # the session sits here until the test interrupts it
"""


@pytest.fixture
def lessons(tmp_path: Path) -> Path:
    """A project of two lessons, each with a run started ahead."""
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["mqtt_factory_lab.plugin"]\n')
    for number in (1, 2):
        (tmp_path / f"test_lesson{number}.py").write_text(LESSON.format(number=number))
    return tmp_path


def start(project: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "MQTT_LAB_"))}
    environ.update(PYTHONPATH=str(REPO), PIDS=str(project / "pids"), **env)
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "-rN", *args],
        cwd=project,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run(project: Path, *args: str, **env: str) -> tuple[int, str]:
    child = start(project, *args, **env)
    output, _ = child.communicate(timeout=120)
    return child.returncode, output


def order(output: str) -> list[str]:
    """The experiments in the order they ran (``-v`` lines), without their outcome."""
    return [
        line.split()[0] for line in output.splitlines() if " PASSED" in line or " FAILED" in line
    ]


def started(project: Path) -> list[int]:
    path = project / "pids"
    return [int(pid) for pid in path.read_text().split()] if path.exists() else []


def left_running(pids: list[int]) -> list[int]:
    """The PIDs of ``pids`` still running (a zombie has ended)."""
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            continue
        if state != "Z":
            alive.append(pid)
    return alive


def test_verdicts_on_runs_started_ahead_come_last_and_find_their_runs_open(lessons) -> None:
    code, output = run(lessons, "-p", "no:xdist", "test_lesson1.py", "test_lesson2.py")

    assert code == 0, output
    assert order(output) == [
        "test_lesson1.py::test_first",
        "test_lesson1.py::test_last",
        "test_lesson2.py::test_first",
        "test_lesson2.py::test_last",
        "test_lesson1.py::test_judges_the_run",
        "test_lesson2.py::test_judges_the_run",
    ], output
    assert len(started(lessons)) == 2, "one run per lesson, started once"
    assert left_running(started(lessons)) == [], "the runs close with the session"


def test_one_lesson_keeps_its_written_order(lessons) -> None:
    code, output = run(lessons, "-p", "no:xdist", "test_lesson1.py")

    assert code == 0, output
    assert order(output) == [
        "test_lesson1.py::test_first",
        "test_lesson1.py::test_judges_the_run",
        "test_lesson1.py::test_last",
    ]
    assert left_running(started(lessons)) == []


def test_a_verdict_selected_alone_or_in_another_order_still_finds_its_run(lessons) -> None:
    code, output = run(lessons, "-p", "no:xdist", "test_lesson1.py::test_judges_the_run")
    assert code == 0, output
    assert len(started(lessons)) == 1

    code, output = run(
        lessons,
        "-p",
        "no:xdist",
        "test_lesson2.py::test_judges_the_run",
        "test_lesson1.py::test_judges_the_run",
        "test_lesson2.py::test_last",
    )
    assert code == 0, output
    assert order(output)[-1] == "test_lesson1.py::test_judges_the_run", output
    assert left_running(started(lessons)) == []


def test_runs_start_only_for_selected_verdicts(lessons) -> None:
    code, output = run(
        lessons, "-p", "no:xdist", "test_lesson1.py", "test_lesson2.py", "-k", "last"
    )

    assert code == 0, output
    assert started(lessons) == [], "no verdict selected: nothing started ahead"


def test_a_failing_verdict_leaves_nothing_running(lessons) -> None:
    code, output = run(lessons, "-p", "no:xdist", "test_lesson1.py", "test_lesson2.py", FAIL="1")

    assert code == 1, output
    assert "the verdict fails" in output
    assert len(started(lessons)) == 2
    assert left_running(started(lessons)) == []


def test_ctrl_c_in_a_later_lesson_stops_the_earlier_lessons_runs(lessons) -> None:
    child = start(lessons, "-p", "no:xdist", "test_lesson1.py", "test_lesson2.py", HANG="1")
    try:
        wait_until(lambda: len(started(lessons)) == 2, timeout=60, interval=0.05)
        wait_until((lessons / "pids.hanging").exists, timeout=60, interval=0.05)
        assert left_running(started(lessons)) == started(lessons), "both runs under way"
        child.send_signal(signal.SIGINT)
        output, _ = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert "KeyboardInterrupt" in output, output
    assert left_running(started(lessons)) == [], output


def test_under_xdist_each_worker_keeps_module_scope_and_the_written_order(lessons) -> None:
    code, output = run(lessons, "-n", "2", "test_lesson1.py", "test_lesson2.py")

    assert code == 0, output
    assert left_running(started(lessons)) == []

    def config(plugins: tuple[str, ...] = (), **option: object) -> SimpleNamespace:
        manager = SimpleNamespace(has_plugin=lambda name: name in plugins)
        return SimpleNamespace(option=SimpleNamespace(**option), pluginmanager=manager)

    worker = config()
    worker.workerinput = {}
    assert ahead_scope("slow_run", worker) == "module"
    assert ahead_scope("slow_run", config(numprocesses=None, dist="no")) == "session"
    assert ahead_scope("slow_run", config(numprocesses=2, dist="load")) == "module"
    # the grader's child runs a submission's lessons one at a time, each swept when it ends
    grading_child = config((GRADING_CHILD,), numprocesses=None, dist="no")
    assert ahead_scope("slow_run", grading_child) == "module"


def item(path: str, *fixtures: str, lesson: bool = True) -> SimpleNamespace:
    marks = {"lesson": object()} if lesson else {}
    return SimpleNamespace(
        path=Path(path), fixturenames=fixtures, get_closest_marker=marks.get, name=path
    )


def test_verdicts_last_is_a_stable_partition_only_across_lessons() -> None:
    JUDGING.add("a_judged_run")
    a1, a2 = item("labs/a.py"), item("labs/a.py", "a_judged_run")
    b1, b2, b3 = item("labs/b.py", "a_judged_run"), item("labs/b.py"), item("labs/b.py", "x")
    helper = item("tests/test_x.py", "a_judged_run", lesson=False)

    assert verdicts_last([a1, a2, b1, b2, b3]) == [a1, b2, b3, a2, b1]
    assert verdicts_last([a1, a2, helper]) == [a1, a2, helper], "one lesson: as written"
    assert verdicts_last([a2, helper, b2]) == [helper, b2, a2], "only lessons' verdicts move"
    c1, c2 = item("labs/c.py"), item("labs/c.py")
    assert verdicts_last([c1, c2, a1, a2]) == [a1, c1, c2, a2], (
        "a lesson that starts runs ahead goes before one that starts none"
    )
