"""Fixtures the tests in ``tests/`` share: the lab's programs as child processes, and brokers
started directly.

``broker``, ``make_broker``, ``mqtt_client``, ``topic_root`` and ``broker_env`` come
from :mod:`mqtt_factory_lab.plugin`, which the root ``conftest.py`` loads.

=============================================  ===================================================
``sim_program("sim.observer", "--json")``      a program running until the test ends; it printed
                                               its ``ready <id>`` line (a ``RoleProcess``)
``run_program("sim.cli", "pub", ...)``         a program run to its end (a ``CompletedProcess``)
``nowhere``                                    an address where no broker listens
``unique_id("observer")``                      ``observer-1a2b3c4d``: a client or device id no
                                               other test uses
``direct_broker(LocalMosquitto, "acl")``       a broker class started without the plugin's pool
=============================================  ===================================================
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mqtt_factory_lab.brokers.base import Broker, free_port
from mqtt_factory_lab.core.roles import RoleProcess

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SLOW_LANE = "slow_lane"
#: every broken variant's exact verdict beyond the one per lesson the default run keeps
BROKEN_SWEEP = "broken_sweep"
#: markers whose tests run only when ``-m`` names them (CI runs each lane once, .ci/run)
ASKED_BY_NAME = (SLOW_LANE, BROKEN_SWEEP)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{SLOW_LANE}: the slow lane (CI runs it apart: `scripts/test -m {SLOW_LANE}`): every "
        "broken variant in tests/broken/ graded 20 times; deselected unless -m names it",
    )
    config.addinivalue_line(
        "markers",
        f"{BROKEN_SWEEP}: the broken-variant sweep (CI runs it apart: `scripts/test -m "
        f"{BROKEN_SWEEP}`): each lesson fails exactly the experiments a broken variant breaks, "
        "for every variant but the one per lesson the default run keeps; deselected unless "
        "-m names it",
    )


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks it adds
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The lanes of :data:`ASKED_BY_NAME` run only when asked for by name (``-m slow_lane``);
    then the long tests move to the front (:func:`longest_first`)."""
    expression = config.getoption("markexpr", "") or ""
    apart = [name for name in ASKED_BY_NAME if name not in expression]
    if apart:
        kept, left_out = [], []
        for item in items:
            (left_out if any(item.get_closest_marker(m) for m in apart) else kept).append(item)
        if left_out:
            config.hook.pytest_deselected(items=left_out)
            items[:] = kept
    schedule_for_xdist(config, items)


# -- scheduling under pytest-xdist (scripts/test: -n auto) ------------------------------------
#
# Most of the suite's time is spent waiting (brokers' timers, child pytests, a browser), so
# what decides the wall time is when the long tests start: one that starts last is the run's
# tail. The long ones go first, longest first (a worker takes the next test when it has
# fewer than three left), by the seconds they took last time (pytest's cache), or, on a
# fresh clone, by what they declare. A lesson module stays together, in its order: its tests
# are short and share module brokers.

#: test modules whose module fixture is too costly to set up on two workers: one worker each
ONE_WORKER = {
    "tests/test_grading_class.py": "the example class graded once (fixture graded), ~70 s",
}
#: seconds a test took, per node id, kept between runs in pytest's cache
DURATIONS_KEY = "mqtt_factory_lab/durations"
#: a test that took longer than this (or declares itself long) starts before the others
LONG = 2.0


def _declared_seconds(item: pytest.Item, default_timeout: float) -> float:
    """What a test not yet timed says of its length: a child lesson run, a longer time limit."""
    seconds = 10.0 if "run_lesson" in getattr(item, "fixturenames", ()) else 0.0
    mark = item.get_closest_marker("timeout")
    if mark and mark.args and float(mark.args[0]) > default_timeout:
        seconds = max(seconds, 20.0)
    return seconds


def longest_first(
    items: list[pytest.Item], seconds: Callable[[pytest.Item], float]
) -> list[pytest.Item]:
    """The items of ``tests/`` that take :data:`LONG` seconds or more, longest first, then the
    rest in their order (stable: equal estimates keep the collection's order)."""
    long = [
        (i, item)
        for i, item in enumerate(items)
        if not item.nodeid.startswith("labs/") and seconds(item) >= LONG
    ]
    long.sort(key=lambda pair: (-seconds(pair[1]), pair[0]))
    first = {id(item) for _, item in long}
    return [item for _, item in long] + [item for item in items if id(item) not in first]


def schedule_for_xdist(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order ``items`` longest first.

    Every xdist worker computes the same order (xdist requires it): the cache is read here
    and written only by the controller, at the end of the run.
    """
    cache = getattr(config, "cache", None)
    timed: dict[str, float] = cache.get(DURATIONS_KEY, {}) if cache is not None else {}
    default_timeout = float(config.getini("timeout") or 0)
    estimate = {
        id(item): timed.get(item.nodeid, _declared_seconds(item, default_timeout)) for item in items
    }
    items[:] = longest_first(items, lambda item: estimate[id(item)])


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: runs without it (-p no:xdist) too
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist load`` (what ``-n`` means alone) with the modules of :data:`ONE_WORKER` sent
    whole to one worker; every other test goes alone to whichever worker is free, in the
    order above (the :data:`ONE_WORKER` modules, the most tests, first).

    Not ``--dist loadgroup`` with ``xdist_group`` marks: pytest-xdist 3.8 groups by renaming
    node ids, which pytest 9.2 ignores (pytest-dev/pytest-xdist#1386), so the class would be
    graded once per worker. Another ``--dist`` on the command line is left alone.
    """
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class OneWorkerModules(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if path in ONE_WORKER else nodeid

    return OneWorkerModules(config, log)


_took: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _took[report.nodeid] = _took.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The controller (or a run without xdist) keeps what each test took for the next run."""
    cache = getattr(session.config, "cache", None)
    if cache is None or hasattr(session.config, "workerinput") or not _took:
        return
    timed = cache.get(DURATIONS_KEY, {})
    timed.update({nodeid: round(seconds, 2) for nodeid, seconds in _took.items()})
    cache.set(DURATIONS_KEY, timed)


#: ``ready <id>`` alone on a line (see ``sim.runtime.print_ready``)
READY_LINE = r"^ready \S+\s*$"


@dataclass(frozen=True)
class Address:
    """Where a program is told the broker is; ``broker_env`` needs only these two."""

    host: str
    port: int


@pytest.fixture
def nowhere() -> Address:
    """An address where nothing listens: a program pointed there must fail to connect.

    Also the address for runs that need no broker (``--help``), so that they
    cannot use one by accident.
    """
    return Address("127.0.0.1", free_port())


@pytest.fixture
def unique_id() -> Callable[[str], str]:
    """``unique_id("observer")`` → ``observer-1a2b3c4d``.

    Ids must differ between tests: two clients with one id on the shared
    broker take the session from each other.
    """
    return lambda prefix: f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def sim_program(broker_env: Callable[..., dict[str, str]]) -> Iterator[Callable[..., RoleProcess]]:
    """Start ``python -m <module> <args>`` and (by default) wait for its ready line.

    :param module: ``"sim.device"``, ``"sim.controller"``...
    :param args: its command-line arguments.
    :param broker: default: the shared ``broker`` (or a ``make_broker`` one, or ``nowhere``).
    :param topic_root: default: the test's ``topic_root``.
    :param protocol: ``"5"`` or ``"3.1.1"`` (``VF_MQTT_PROTOCOL``).
    :param wait_ready: return only once it printed ``ready <id>``.
    :param name: what failure messages call it (default: the module's last part).
    :param ready_timeout: seconds to wait for the ready line.
    :param stop_timeout: seconds it has to exit after SIGTERM at teardown
        before it is killed (``sim.run_all`` needs time to stop its children).

    It is a :class:`mqtt_factory_lab.core.roles.RoleProcess`, the same as the lessons run a
    solution's programs with: stdout and stderr go to one file, read with
    ``output()`` or waited on with ``wait_for_output(regex)``; ``wait_exit``,
    ``signal``, ``stop`` and ``describe_failure(what)`` for messages. Every
    program still running at the end of the test is stopped (SIGTERM, then
    SIGKILL) and its output file removed.

    Example::

        def test_observer_says_hello(sim_program):
            observer = sim_program("sim.observer", "--count", "1")
            assert observer.wait_exit(10) == 0, observer.describe_failure("did not stop")
    """
    started: list[tuple[RoleProcess, float]] = []

    def start(
        module: str,
        *args: str,
        broker: Broker | Address | None = None,
        topic_root: str | None = None,
        protocol: str = "5",
        wait_ready: bool = True,
        name: str | None = None,
        ready_timeout: float = 15.0,
        stop_timeout: float = 5.0,
    ) -> RoleProcess:
        program = RoleProcess(
            module,
            name or module.rpartition(".")[2],
            [sys.executable, "-m", module, *args],
            env=broker_env(broker, topic_root, protocol),
            cwd=PROJECT_ROOT,
        )
        started.append((program, stop_timeout))
        program.start()
        if wait_ready:
            program.wait_for_output(READY_LINE, timeout=ready_timeout)
        return program

    yield start
    for program, stop_timeout in started:
        program.stop(stop_timeout)
        program.close()


@pytest.fixture
def run_program(
    broker_env: Callable[..., dict[str, str]],
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``python -m <module> <args>`` to its end; its stdout and stderr come back apart.

    Takes ``broker``, ``topic_root`` and ``protocol`` like :func:`sim_program`,
    and ``timeout`` (seconds, default 30) after which the run is killed and the
    test fails.
    """

    def run(
        module: str,
        *args: str,
        broker: Broker | Address | None = None,
        topic_root: str | None = None,
        protocol: str = "5",
        timeout: float = 30.0,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", module, *args],
            env=broker_env(broker, topic_root, protocol),
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


@pytest.fixture
def direct_broker() -> Iterator[Callable[..., Broker]]:
    """``direct_broker(LocalMosquitto, "acl", **options)``: start a broker class directly.

    For the tests of the broker backends themselves, which must not go
    through the plugin's pool. Every broker is closed when the test ends.
    """
    brokers: list[Broker] = []

    def start(cls: type[Broker], variant: str = "open", **options: Any) -> Broker:
        broker = cls(variant, **options)
        brokers.append(broker)
        broker.start()
        return broker

    yield start
    for broker in brokers:
        broker.close()


# -- grading a solution with a lesson, in a child pytest -------------------------------


@dataclass
class LessonRun:
    """What a child ``pytest LESSON --solution S`` did: its outcome per experiment and its output.

    :ivar outcomes: ``{test name with parameters: "passed" | "failed" | "skipped" | "error"}``.
    :ivar messages: the failure text of each failed experiment (the teaching message).
    """

    returncode: int
    output: str
    outcomes: dict[str, str]
    messages: dict[str, str]

    def failed(self, name_part: str = "") -> list[str]:
        return [n for n, o in self.outcomes.items() if o in ("failed", "error") and name_part in n]

    def passed(self, name_part: str = "") -> list[str]:
        return [n for n, o in self.outcomes.items() if o == "passed" and name_part in n]

    def message(self, name_part: str) -> str:
        """The joined failure messages of the experiments whose names contain ``name_part``."""
        return "\n".join(m for n, m in self.messages.items() if name_part in n)


@pytest.fixture
def run_lesson(tmp_path: Path, pytestconfig: pytest.Config) -> Callable[..., LessonRun]:
    """``run_lesson("labs/03_retained.py", solution=dir, "-m", "solution")``: grade a solution.

    Runs the lesson in a child pytest on the same broker backend as this run, with the
    solution manifest given (default: the reference), and reads the outcome of every
    experiment from its JUnit XML. The child inherits nothing from ``MQTT_LAB_*``;
    ``timeout`` (seconds, default 300) bounds the child run.
    """
    import os
    import xml.etree.ElementTree as ET

    runs = iter(range(1, 1000))

    def run(
        lesson: str, *args: str, solution: Path | str | None = None, timeout: float = 300
    ) -> LessonRun:
        xml = tmp_path / f"{Path(lesson).stem}-{next(runs)}.xml"
        backend = pytestconfig.getoption("--broker-backend")
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            "-q",
            "--no-header",
            f"--junitxml={xml}",
            f"--broker-backend={backend}",
            lesson,
        ]
        if solution is not None:
            command.append(f"--solution={solution}")
        # The child takes the backend from its command line; of the lab's variables it
        # keeps only the docker image and network (CI's offline image), not a solution.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PYTEST_", "MQTT_LAB_"))
            or k in ("MQTT_LAB_DOCKER_IMAGE", "MQTT_LAB_DOCKER_NETWORK", "MQTT_LAB_MOSQUITTO")
        }
        done = subprocess.run(
            [*command, *args],
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        outcomes: dict[str, str] = {}
        messages: dict[str, str] = {}
        if xml.exists():
            for case in ET.parse(xml).getroot().iter("testcase"):
                name = case.get("name", "")
                outcome = "passed"
                for child in case:
                    if child.tag in ("failure", "error", "skipped"):
                        outcome = "failed" if child.tag == "failure" else child.tag
                        text = (child.get("message") or "") + "\n" + (child.text or "")
                        if outcome != "skipped":
                            messages[name] = text
                outcomes[name] = outcome
        return LessonRun(done.returncode, done.stdout + done.stderr, outcomes, messages)

    return run


@pytest.fixture
def mutant_solution(tmp_path: Path) -> Callable[..., Path]:
    """``mutant_solution("device", "--retain", "telemetry")``: the reference with one broken role.

    Writes a manifest like the reference ``solution.toml`` whose ``role`` runs its program
    through ``tests/broken/mutate.py`` with the given mutation (a mistake a student could
    make), and returns its path, for ``run_lesson(..., solution=path)``.
    """
    import tomllib

    mutate = Path(__file__).parent / "broken" / "mutate.py"

    def make(role: str, *mutation: str) -> Path:
        reference = tomllib.loads((PROJECT_ROOT / "solution.toml").read_text())
        lines = ["[solution]", f'name = "reference, {role} broken: {" ".join(mutation)}"', ""]
        for name, spec in reference["roles"].items():
            command = list(spec["command"])
            if name == role:
                assert command[1] == "-m", f"the reference {role} is not run with -m"
                command = [command[0], str(mutate), *mutation, *command[2:]]
            lines += [f"[roles.{name}]", f"command = {json.dumps(command)}"]
            if "ready" in spec:
                lines.append(f"ready = {json.dumps(spec['ready'])}")
            for option, args in spec.get("options", {}).items():
                lines.append(f"options.{option} = {json.dumps(args)}")
            lines.append("")
        folder = tmp_path / f"mutant-{role}-{'-'.join(m.strip('-') for m in mutation)}"[:120]
        folder.mkdir(parents=True, exist_ok=True)
        # a solution's [files] live inside its folder: copies of the reference's
        files = {k: Path(v).name for k, v in reference.get("files", {}).items()}
        for k, v in reference.get("files", {}).items():
            shutil.copyfile(PROJECT_ROOT / v, folder / files[k])
        lines += ["[files]", *(f"{k} = {json.dumps(v)}" for k, v in files.items())]
        filters = reference.get("filters", {})
        if filters:
            lines += ["", "[filters]", *(f"{k} = {json.dumps(v)}" for k, v in filters.items())]
        # the reference's programs (python -m sim.…) import from the lab's folder
        (folder / "sim").symlink_to(PROJECT_ROOT / "sim")
        manifest = folder / "solution.toml"
        manifest.write_text("\n".join(lines) + "\n")
        return manifest

    return make
