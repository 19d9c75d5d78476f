"""Units of grading: the lesson files (or files of hidden experiments) of one submission,
run in one child pytest, each lesson held to its own time limit.

A child pytest costs an interpreter, the lab's plugin and a collection (~1.5 s of a core):
one serves every lesson of a submission. Each lesson still has what a child of its own gave
it: its own brokers and a sweep of what it left running between two lessons
(:mod:`.child`), its own time limit (``lesson_timeout`` from its first experiment's start:
the grader follows the child's events and stops it when a lesson overruns), and its own
verdict when the child dies under it (the exit status and the child's last output); the
lessons after one that was stopped or took the child down run in a new child.

The child gets its own broker pool, session and process group, network
namespace (when the machine allows it, :mod:`~mqtt_factory_lab.grading.sandbox`), the
grader's own pytest configuration (``-c`` the grader's ini, ``--rootdir``/``--confcutdir``
the grader's private lab copy, ``-p no:cacheprovider``, ``python -I``, a working directory
outside the submission: nothing in a submission is read by the tests), time limits
(``--timeout`` per experiment, ``lesson_timeout`` for the unit) and a token in the
environment that every program it starts inherits, by which leftovers are found and killed.
What it did comes from its ``--points-jsonl`` stream, which survives a killed run.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mqtt_factory_lab.core.limits import ENV_LIMITS
from mqtt_factory_lab.core.paths import LAB_ROOT
from mqtt_factory_lab.core.process import die_with_parent
from mqtt_factory_lab.grading.child import ENV_EVENTS, ENV_LOG
from mqtt_factory_lab.grading.points import Experiment, read_jsonl
from mqtt_factory_lab.grading.sandbox import ENV_TOKEN, end, network_prefix, sweep
from mqtt_factory_lab.grading.settings import Settings


@dataclass
class UnitResult:
    """What one child pytest did for one submission and one lesson file."""

    file: str
    returncode: int | None
    seconds: float
    token: str = ""
    timed_out: bool = False
    #: the submission's own time limit ran out while (or before) this lesson ran
    out_of_time: bool = False
    cancelled: bool = False
    killed_leftovers: int = 0
    log_tail: str = ""
    experiments: list[Experiment] = field(default_factory=list)
    #: the child's start-up before this lesson's first experiment (interpreter, plugin,
    #: collection), wall and CPU seconds: only the first lesson of a child has one
    startup_seconds: float = 0.0
    startup_cpu_seconds: float = 0.0
    #: CPU seconds of the lesson (start to end): the child pytest's own, and its programs'
    #: (brokers, student programs)
    cpu_seconds: float = 0.0
    programs_cpu_seconds: float = 0.0


class Cancelled(Exception):
    """Grading was interrupted (Ctrl-C)."""


class UnitRunner:
    """Runs child pytests and ends them and everything they started, on every path.

    :param python: the interpreter of the child pytests, and so ``{python}`` of the
        student programs (a :class:`~mqtt_factory_lab.grading.sandbox.ReadableRuntime`'s).
    :param lab_root: the lab's folder as that interpreter sees it (``pythonpath``).
    :param env: more environment for the child pytests (the runtime's ``LD_LIBRARY_PATH``).
    :param isolate_network: run each child in a network namespace of its own.
    """

    def __init__(
        self,
        settings: Settings,
        workdir: Path,
        *,
        python: str = sys.executable,
        lab_root: Path = LAB_ROOT,
        env: dict[str, str] | None = None,
        isolate_network: bool = False,
    ) -> None:
        self.settings = settings
        self.workdir = workdir
        self.python = python
        self.lab_root = lab_root
        self.extra_env = dict(env or {})
        self.isolate_network = isolate_network
        self.ini = workdir / "pytest.ini"
        #: the grader's own copy of the lessons and hidden experiments (``labs/``, ``extra/``):
        #: root's alone (0700), whatever user the student programs run as
        self.root = workdir / "lab"
        self.root.mkdir(mode=0o700, exist_ok=True)
        self.root.chmod(0o700)
        self.cancel = threading.Event()
        self._live: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._write_ini()

    def _write_ini(self) -> None:
        """The grader's own pytest configuration: the lab's, whatever a submission holds."""
        self.ini.write_text(
            "[pytest]\n"
            "python_files = [0-9][0-9]_*.py test_*.py *.py\n"
            f"pythonpath = {self.lab_root}\n"
            # -p no:hypothesispytest: Hypothesis's plugin imports all of Hypothesis at a run's
            # end (the lab's own pyproject.toml says the same for the suite)
            "addopts = -p mqtt_factory_lab.plugin --strict-markers -p no:hypothesispytest\n"
            "timeout_method = signal\n"
            "junit_family = xunit2\n"
        )
        self.ini.chmod(0o600)

    def command(self, files: list[Path], manifest: Path, jsonl: Path, extra: bool) -> list[str]:
        command = [
            self.python,
            "-I",
            "-m",
            "pytest",
            "-c",
            str(self.ini),
            "--rootdir",
            str(self.root),
            "--confcutdir",
            str(self.root),
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            "-p",
            "no:xdist.looponfail",  # xdist's second entry point imports xdist and execnet
            "-p",
            "mqtt_factory_lab.grading.child",
            "-q",
            "--no-header",
            "--no-points-summary",
            "--continue-on-collection-errors",
            f"--timeout={self.settings.test_timeout:g}",
            f"--broker-backend={self.settings.backend}",
            f"--solution={manifest}",
            f"--points-jsonl={jsonl}",
            f"--basetemp={jsonl.parent / 'tmp'}",
        ]
        if not extra and self.settings.marker:
            command += ["-m", self.settings.marker]
        return [*command, *map(str, files)]

    def environment(self, token: str, limits_env: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PYTEST_", "MQTT_LAB_", "PYTHON", "VF_"))
        }
        env.update(self.extra_env)
        env.update({ENV_TOKEN: token, ENV_LIMITS: limits_env, "PYTHONDONTWRITEBYTECODE": "1"})
        return env

    def run(
        self, file: Path, manifest: Path, workdir: Path, slot: int, extra: bool = False
    ) -> UnitResult:
        """Run one lesson file against ``manifest`` (see :meth:`run_lessons`)."""
        return self.run_lessons([file], manifest, workdir, slot, extra)[0]

    def run_lessons(
        self,
        files: list[Path],
        manifest: Path,
        workdir: Path,
        slot: int,
        extra: bool = False,
        on_experiment: Callable[[int], None] | None = None,
        deadline: float | None = None,
    ) -> list[UnitResult]:
        """Run ``files`` against ``manifest`` in as few child pytests as their limits allow.

        One child runs them all, one after the other. A lesson that overruns its limit has
        its child stopped (with everything it started), and a lesson that takes its child
        down with it keeps what it did and the child's last words; either way the lessons
        after it run in a new child. :returns: one result per file, in order.
        :param on_experiment: called with the number of experiments finished so far.
        :param deadline: when the submission's own time limit runs out (monotonic): the
            child is stopped then, and the lessons it did not get to are not run.
        """
        results: dict[str, UnitResult] = {}
        todo = list(files)
        finished_before = 0
        while todo:
            if self.cancel.is_set():
                if results:
                    for file in todo:
                        results[file.name] = UnitResult(file.name, None, 0.0, cancelled=True)
                    break
                raise Cancelled
            if deadline is not None and time.monotonic() >= deadline:
                for file in todo:
                    results[file.name] = UnitResult(file.name, None, 0.0, out_of_time=True)
                break
            child = self._run_child(
                todo, manifest, workdir, slot, extra, on_experiment, finished_before, deadline
            )
            results.update((unit.file, unit) for unit in child)
            finished_before += sum(len(unit.experiments) for unit in child)
            todo = [file for file in todo if file.name not in results]
        return [results[file.name] for file in files]

    def _run_child(
        self,
        files: list[Path],
        manifest: Path,
        workdir: Path,
        slot: int,
        extra: bool,
        on_experiment: Callable[[int], None] | None,
        finished_before: int,
        deadline: float | None = None,
    ) -> list[UnitResult]:
        """One child pytest for ``files``: the results of the lessons it got to (at least one)."""
        token = uuid.uuid4().hex
        name = files[0].stem if len(files) == 1 else f"{files[0].stem}-{token[:6]}"
        jsonl = workdir / f"{name}.jsonl"
        log = workdir / f"{name}.log"
        events_path = workdir / f"{name}.events"
        for path in (jsonl, events_path):
            path.unlink(missing_ok=True)
            path.touch(mode=0o600)  # the child appends; the student's user cannot read it
        cwd = workdir / "cwd"
        cwd.mkdir(mode=0o700, exist_ok=True)
        # The child's temporary files (brokers' folders, programs' logs) go in the submission's
        # work folder, which goes when the submission is graded: a child stopped at its limit
        # cleans up nothing itself. Writable by the student's programs as /tmp is, not listable.
        scratch = workdir / "tempdir"  # not pytest's --basetemp, which pytest makes 0700 anew
        scratch.mkdir(exist_ok=True)
        scratch.chmod(0o1733)
        limits = self.settings.limits
        uid = self.settings.uid_for(slot)
        if uid is not None:
            limits = replace(limits, uid=uid, gid=uid)
        env = self.environment(token, limits.to_env())
        env.update({ENV_EVENTS: str(events_path), ENV_LOG: str(log), "TMPDIR": str(scratch)})
        prefix = network_prefix(self.python) if self.isolate_network else []
        started = time.monotonic()
        timed_out = cancelled = out_of_time = False
        watch = _Watch(events_path, jsonl, started)
        with open(log, "wb") as out:
            os.chmod(log, 0o600)
            process = subprocess.Popen(
                [*die_with_parent(), *prefix, *self.command(files, manifest, jsonl, extra)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
        with self._lock:
            self._live[token] = process
        try:
            while True:
                try:
                    process.wait(timeout=0.25)
                    break
                except subprocess.TimeoutExpired:
                    pass
                watch.read()
                if on_experiment is not None and watch.experiments_changed():
                    on_experiment(finished_before + watch.experiments)
                if self.cancel.is_set():
                    cancelled = True
                    break
                if time.monotonic() - watch.lesson_started >= self.settings.lesson_timeout:
                    timed_out = True
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    timed_out = out_of_time = True
                    break
        finally:
            end(process)
            killed = sweep(token, limits.uid)
            ended = time.monotonic()
            with self._lock:
                self._live.pop(token, None)
        watch.read()
        experiments = read_jsonl(jsonl)
        text = log.read_bytes().decode(errors="replace") if log.exists() else ""
        return watch.results(
            files, experiments, text, token=token, returncode=process.returncode,
            timed_out=timed_out, cancelled=cancelled, killed=killed, ended=ended,
            out_of_time=out_of_time,
        )  # fmt: skip

    def stop_all(self) -> None:
        """Cancel: end every running child pytest and whatever it started."""
        self.cancel.set()
        with self._lock:
            live = list(self._live.items())
        for token, process in live:
            end(process)
            sweep(token)  # (the slots' users are swept by the units themselves)


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


class _Watch:
    """What a child pytest said so far: its events (:mod:`.child`) and finished experiments.

    :ivar lesson_started: when the lesson it runs now began (monotonic): its start, or the
        end of the one before (the time between two lessons is the next one's); until the
        first lesson starts, when the child did (a hang in start-up or collection is the
        first lesson's).
    """

    def __init__(self, events: Path, jsonl: Path, started: float) -> None:
        self.events_path = events
        self.jsonl = jsonl
        self.started = started
        #: the same moment on the wall clock (the child's events carry wall-clock times)
        self.started_wall = time.time() - (time.monotonic() - started)
        self.lesson_started = started
        self.events: list[dict[str, Any]] = []
        self._offset = 0
        self.experiments = 0
        self._reported = 0
        self._jsonl_size = 0

    def read(self) -> None:
        with contextlib.suppress(OSError), self.events_path.open("rb") as stream:
            stream.seek(self._offset)
            data = stream.read()
            complete = data[: data.rfind(b"\n") + 1]
            self._offset += len(complete)
            for line in complete.splitlines():
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    self.events.append(event)
                    if event.get("event") in ("start", "end"):
                        # the child's wall clock, in this process's monotonic time
                        self.lesson_started = time.monotonic() - max(
                            0.0, time.time() - float(event["t"])
                        )
        with contextlib.suppress(OSError):
            size = self.jsonl.stat().st_size
            if size != self._jsonl_size:
                self._jsonl_size = size
                self.experiments = self.jsonl.read_bytes().count(b"\n")

    def _costs(self, start: dict[str, Any], stop: dict[str, Any]) -> dict[str, float]:
        """A finished lesson's CPU (and, for a child's first lesson, the child's start-up)."""

        def cpu(event: dict[str, Any], key: str) -> float:
            return float(event.get(key, 0.0))

        costs = {
            "cpu_seconds": round(cpu(stop, "cpu") - cpu(start, "cpu"), 3),
            "programs_cpu_seconds": round(
                cpu(stop, "cpu_programs") - cpu(start, "cpu_programs"), 3
            ),
        }
        first = next((e for e in self.events if e.get("event") == "start"), None)
        if first is start:
            costs["startup_cpu_seconds"] = round(cpu(start, "cpu") + cpu(start, "cpu_programs"), 3)
            costs["startup_seconds"] = round(max(0.0, float(start["t"]) - self.started_wall), 3)
        return costs

    def experiments_changed(self) -> bool:
        changed = self.experiments != self._reported
        self._reported = self.experiments
        return changed

    def results(
        self,
        files: list[Path],
        experiments: list[Experiment],
        log: str,
        *,
        token: str,
        returncode: int | None,
        timed_out: bool,
        cancelled: bool,
        killed: int,
        ended: float,
        out_of_time: bool = False,
    ) -> list[UnitResult]:
        """One result per lesson the child got to; the one it was running when it ended
        (or, if it ran none, the first) carries the child's end: its status, its limit, its
        leftovers and its last output."""
        by_file: dict[str, list[Experiment]] = {}
        for exp in experiments:
            by_file.setdefault(Path(exp.nodeid.split("::")[0]).name, []).append(exp)
        starts: dict[str, dict[str, Any]] = {}
        ends: dict[str, dict[str, Any]] = {}
        errors: dict[str, str] = {}
        for event in self.events:
            kind, file = event.get("event"), str(event.get("file"))
            if kind == "start":
                starts.setdefault(file, event)
            elif kind == "end":
                ends[file] = event
            elif kind == "collect-error":
                errors[file] = str(event.get("text", ""))
        data = log.encode()
        clean = returncode in (0, 1, 5) and not (timed_out or cancelled)
        done = set(ends) | set(errors)
        running = [f.name for f in files if f.name in starts and f.name not in done]
        if clean:
            last = None  # it ended by itself: every lesson had its turn
        elif running:
            last = running[-1]
        else:
            last = next((f.name for f in files if f.name not in done), None)
        results: list[UnitResult] = []
        for file in files:
            name = file.name
            mine = by_file.get(name, [])
            if name in ends:
                start, stop = starts.get(name, ends[name]), ends[name]
                part = data[int(start.get("log", 0)) : int(stop.get("log", len(data)))]
                failed = any(e.outcome in ("failed", "error") for e in mine)
                results.append(UnitResult(
                    file=name, token=token, returncode=1 if failed else (0 if mine else 5),
                    seconds=float(stop["t"]) - float(start["t"]),
                    killed_leftovers=int(stop.get("killed", 0)),
                    log_tail=_tail(part.decode(errors="replace"), 40), experiments=mine,
                    **self._costs(start, stop),
                ))  # fmt: skip
            elif name in errors or (name != last and name not in starts):
                # not collected (its error is its last output), or nothing of it selected
                results.append(UnitResult(
                    file=name, token=token, returncode=2 if name in errors else 5, seconds=0.0,
                    log_tail=_tail(errors.get(name, ""), 40), experiments=mine,
                ))  # fmt: skip
            else:  # the lesson the child was running when it ended, or the first it would run
                start = starts.get(name)
                since = self.lesson_started if start is not None else self.started
                part = data[int(start.get("log", 0)) :] if start is not None else data
                results.append(UnitResult(
                    file=name, token=token, returncode=returncode, seconds=ended - since,
                    timed_out=timed_out, cancelled=cancelled, killed_leftovers=killed,
                    out_of_time=out_of_time,
                    log_tail=_tail(part.decode(errors="replace"), 40), experiments=mine,
                ))  # fmt: skip
                killed = 0
            if name == last:
                break  # the lessons after it run in a new child
        if killed and results:  # what the last sweep found: the last lesson's leftovers
            results[-1].killed_leftovers += killed
        return results
