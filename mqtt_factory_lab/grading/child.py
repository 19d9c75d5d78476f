"""The grader's side of a child pytest that runs every lesson of one submission.

Loaded only in the grader's child pytests (``-p mqtt_factory_lab.grading.child``), with
:data:`ENV_EVENTS` naming a file only root can read. It appends one JSON line per event, so
the grader can hold each lesson to its own time limit while one interpreter, one plugin
start-up and one collection serve them all:

``{"event": "start", "file": F, "t": T, "log": N}``    the first experiment of lesson ``F``
                                                      starts (wall clock ``T``; the child's
                                                      log was ``N`` bytes long)
``{"event": "end", "file": F, "t": T, "log": N, "killed": K}``
                                                      lesson ``F`` is over: its module
                                                      fixtures are torn down, its brokers
                                                      stopped, and ``K`` programs it left
                                                      running were killed
``{"event": "collect-error", "file": F, "text": S}``   lesson ``F`` could not be collected

Every event also carries ``cpu`` and ``cpu_programs``: the CPU seconds (user + system) the
child has used so far itself (interpreter, plugin, collection, the experiments' own clients)
and those of the programs it started and waited for (brokers, student programs), so a
lesson's cost is the difference between its ``start`` and ``end`` (and the first ``start``
is the child's start-up).

Between two lessons it does what the end of a child pytest used to do: it stops every broker
of the session (the next lesson starts fresh ones, as before) and kills every process the
lesson left behind — those of the slot's user, and those that carry the run's token but are
neither this process nor a broker it tracks — so that one lesson's leftovers cannot eat the
next lesson's process limit or talk to its brokers.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from mqtt_factory_lab.core.limits import Limits
from mqtt_factory_lab.core.process import tracked_pids
from mqtt_factory_lab.grading.sandbox import ENV_TOKEN, psutil, sweep

#: the environment variable naming the events file (removed before any program starts)
ENV_EVENTS = "MQTT_LAB_GRADE_EVENTS"
#: the environment variable naming the child's own log (its size marks each lesson's part)
ENV_LOG = "MQTT_LAB_GRADE_LOG"


class _Events:
    def __init__(self, path: Path, log: Path | None) -> None:
        self.path = path
        self.log = log
        self.current: str | None = None
        self.pool: Any = None

    def write(self, event: str, file: str, **more: Any) -> None:
        line = {"event": event, "file": file, "t": time.time(), "log": self._log_size()}
        line.update(_cpu(), **more)
        with self.path.open("a") as stream:
            stream.write(json.dumps(line) + "\n")

    def _log_size(self) -> int:
        if self.log is None:
            return 0
        with contextlib.suppress(OSError):
            return self.log.stat().st_size
        return 0


def _cpu() -> dict[str, float]:
    mine = resource.getrusage(resource.RUSAGE_SELF)
    programs = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "cpu": round(mine.ru_utime + mine.ru_stime, 3),
        "cpu_programs": round(programs.ru_utime + programs.ru_stime, 3),
    }


_EVENTS = pytest.StashKey[_Events]()


def _file_of(nodeid: str) -> str:
    return Path(nodeid.split("::")[0]).name


def pytest_configure(config: pytest.Config) -> None:
    path = os.environ.pop(ENV_EVENTS, "")
    log = os.environ.pop(ENV_LOG, "")
    if path:
        config.stash[_EVENTS] = _Events(Path(path), Path(log) if log else None)
        _CONFIG["config"] = config
    limits = Limits.from_env()
    if limits is not None and limits.uid is not None and os.geteuid() == 0:
        _open_temporary_folders_to(limits.gid if limits.gid is not None else limits.uid)


def _open_temporary_folders_to(gid: int) -> None:
    """Let the slot's user create files in the run's temporary folders, and nothing more.

    A lesson hands its student programs paths in ``tmp_path`` (a data center's database, a
    trace's output), but pytest makes every such folder 0700, the grader's (root's) alone:
    run as the slot's user, the programs could not write there. Here each folder
    ``tmp_path``/``tmp_path_factory`` makes is the slot's group's to write in, sticky (mode
    1770, owner root): its programs may create files, never rename nor remove the lesson's
    own (a broker's password file stays the lesson's); the base folder is only passable
    (0710). No other slot's user gets in.
    """
    original_mktemp = pytest.TempPathFactory.mktemp
    original_basetemp = pytest.TempPathFactory.getbasetemp

    def getbasetemp(self: pytest.TempPathFactory) -> Path:
        path = original_basetemp(self)
        _hand_over(path, gid, 0o710)
        return path

    def mktemp(self: pytest.TempPathFactory, basename: str, numbered: bool = True) -> Path:
        path = original_mktemp(self, basename, numbered)
        _hand_over(path, gid, 0o1770)
        return path

    pytest.TempPathFactory.getbasetemp = getbasetemp  # type: ignore[method-assign]
    pytest.TempPathFactory.mktemp = mktemp  # type: ignore[method-assign]


def _hand_over(path: Path, gid: int, mode: int) -> None:
    with contextlib.suppress(OSError):
        os.chown(path, -1, gid)
        os.chmod(path, mode)


#: this process's configuration (collect and log-start hooks are not handed it)
_CONFIG: dict[str, pytest.Config] = {}


def _events() -> _Events | None:
    config = _CONFIG.get("config")
    return None if config is None else config.stash.get(_EVENTS, None)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    events = _events()
    if events is not None and report.failed and report.nodeid.endswith(".py"):
        events.write("collect-error", _file_of(report.nodeid), text=str(report.longrepr)[-4000:])


@pytest.fixture(scope="session", autouse=True)
def _grading_broker_pool(request: pytest.FixtureRequest) -> Iterator[None]:
    """Keep the session's broker pool at hand, to stop its brokers between two lessons."""
    events = request.config.stash.get(_EVENTS, None)
    if events is not None:
        events.pool = request.getfixturevalue("broker_pool")
    yield


def pytest_runtest_logstart(nodeid: str, location: tuple[str, int | None, str]) -> None:
    events = _events()
    if events is None:
        return
    file = _file_of(nodeid)
    if file != events.current:
        events.current = file
        events.write("start", file)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    result = yield  # an interrupted run (the grader's SIGTERM) ends here: no "end" event
    events = item.config.stash.get(_EVENTS, None)
    if events is None:
        return result
    file = _file_of(item.nodeid)
    if nextitem is not None and _file_of(nextitem.nodeid) == file:
        return result
    # The lesson's module fixtures are torn down (and, after the last lesson, the session's).
    if events.pool is not None and nextitem is not None:
        events.pool.close()  # the next lesson starts its brokers afresh
    events.write("end", file, killed=sweep_leftovers())
    events.current = None
    return result


def sweep_leftovers() -> int:
    """Kill the programs a lesson left: the slot user's, and token carriers but this process
    and the brokers it tracks. :returns: how many there were."""
    if psutil is None:  # pragma: no cover - the grader refuses to run without psutil
        return 0
    token = os.environ.get(ENV_TOKEN, "")
    limits = Limits.from_env()
    uid = limits.uid if limits is not None else None
    # (the brokers are stopped by now: what else it still tracks, and itself, stay)
    return sweep(token, uid, keep={os.getpid(), *tracked_pids()})
