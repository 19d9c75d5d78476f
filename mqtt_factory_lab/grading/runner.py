"""Grade a class: every submission in isolation, several at once, nothing left running.

One **unit** of work is one lesson file (or one file of hidden experiments) run against one
submission, in a child pytest of its own:

* its own brokers (the child's broker pool), its own copy of the submission (a temporary
  folder the grader made and, as root, gave to the unprivileged user the programs run as),
  its own session / process group, and a token in the environment that every program it
  starts inherits, so that whatever is still running afterwards — a program that forked
  away from its process group included — is found by that token and killed;
* the lab's own lessons and configuration: ``-c`` the grader's ini, ``--rootdir`` and
  ``--confcutdir`` the lab's folder, ``-p no:cacheprovider``, ``python -I`` (no
  ``PYTHONPATH``, no current folder on ``sys.path``), working directory outside the
  submission: nothing in a submission (``conftest.py``, ``pytest.ini``, a module named
  like the lab's) is read by the tests;
* time limits: ``--timeout`` per experiment (pytest-timeout), ``lesson_timeout`` for the
  whole unit (then SIGTERM, a grace period, SIGKILL), CPU and the other
  :mod:`~mqtt_factory_lab.core.limits` per program.

What a unit did comes from its ``--points-jsonl`` stream, which survives a killed run; an
experiment of the plan (collected once, before grading) that has no result scores 0 with
the reason (timeout, crash of the run, broken manifest).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

try:  # finds the programs that left their process group (sweep); a dev extra for now
    import psutil
except ImportError:  # pragma: no cover - depends on the installation
    psutil = None  # type: ignore[assignment]

from mqtt_factory_lab.core.limits import ENV_LIMITS, Limits
from mqtt_factory_lab.core.paths import LAB_ROOT, LABS_DIR
from mqtt_factory_lab.core.process import die_with_parent
from mqtt_factory_lab.core.solution import ManifestError, load
from mqtt_factory_lab.grading.points import Experiment, lesson_key, read_jsonl, read_plan, summarize

#: every process a unit starts inherits this variable; its value names the unit
ENV_TOKEN = "MQTT_LAB_GRADE_TOKEN"
#: the format name of a run's JSON (``runs/<student>.json``)
RUN_FORMAT = "mqtt-factory-lab/grade-run/1"
#: seconds a child pytest has after SIGTERM to stop its programs and brokers
GRACE_SECONDS = 10.0
#: folders and files a submission copy leaves out
IGNORED = shutil.ignore_patterns(".git", "__pycache__", "*.pyc", ".venv", "venv", "node_modules")
#: largest submission the grader copies, in bytes
MAX_SUBMISSION_BYTES = 50 * 1024 * 1024
#: first uid for student programs when the grader runs as root (one per parallel slot)
UID_BASE = 64200


def unprivileged_python_problem(uid: int) -> str:
    """Why user ``uid`` cannot run the lab's Python and import paho-mqtt ("" if it can).

    A virtualenv whose interpreter lives under ``/root`` (pyenv) is out of reach for every
    other user: student programs could not even start.
    """
    try:
        done = subprocess.run(
            [sys.executable, "-c", "import paho.mqtt.client"],
            user=uid,
            group=uid,
            extra_groups=[],
            cwd="/",
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except OSError as error:
        return f"{sys.executable}: {error}"
    return "" if done.returncode == 0 else (done.stderr.strip().splitlines() or ["?"])[-1]


class GradingError(RuntimeError):
    """The grader cannot run at all (no lessons, a bad option); the message says what to do."""


@dataclass(frozen=True)
class Settings:
    """How a class is graded; part of every submission's hash, so a change re-grades."""

    lessons: tuple[Path, ...]
    extra_tests: tuple[Path, ...] = ()
    marker: str = "solution"
    lesson_timeout: float = 180.0
    test_timeout: float = 60.0
    limits: Limits = field(default_factory=Limits)
    backend: str = "local"
    run_as_uid_base: int | None = UID_BASE

    def uid_for(self, slot: int) -> int | None:
        """The user id the programs of parallel slot ``slot`` run as (``None``: the grader's)."""
        if self.run_as_uid_base is None or os.geteuid() != 0:
            return None
        return self.run_as_uid_base + slot

    def fingerprint(self) -> str:
        """A hash of the lessons' and hidden experiments' text and of these settings."""
        digest = hashlib.sha256()
        for path in (*self.lessons, *self.extra_tests):
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        settings = {
            "marker": self.marker,
            "lesson_timeout": self.lesson_timeout,
            "test_timeout": self.test_timeout,
            "limits": asdict(self.limits),
            "backend": self.backend,
        }
        digest.update(json.dumps(settings, sort_keys=True).encode())
        return digest.hexdigest()


def discover_lessons(selection: Iterable[str] | None = None, labs: Path = LABS_DIR) -> list[Path]:
    """The lesson files ``labs/NN_*.py``, all or those whose number is in ``selection``.

    :raises GradingError: when a selected lesson does not exist.
    """
    found = {p.name[:2]: p for p in sorted(labs.glob("[0-9][0-9]_*.py"))}
    if selection is None:
        return list(found.values())
    wanted = [f"{int(s):02d}" for s in selection]
    missing = [w for w in wanted if w not in found]
    if missing:
        raise GradingError(
            f"no lesson {', '.join(missing)} in {labs}: the lab has lessons "
            f"{', '.join(found) or 'none'}"
        )
    return [found[w] for w in wanted]


def discover_extra_tests(folder: Path | None) -> list[Path]:
    """The instructor's hidden experiments: every ``*.py`` in ``folder`` but ``conftest.py``."""
    if folder is None:
        return []
    if not folder.is_dir():
        raise GradingError(f"--extra-tests {folder}: not a folder of test files")
    files = sorted(p for p in folder.glob("*.py") if p.name != "conftest.py")
    if not files:
        raise GradingError(f"--extra-tests {folder}: no *.py files with experiments in it")
    return [p.resolve() for p in files]


def discover_submissions(folder: Path) -> list[Path]:
    """Every sub-folder of ``folder`` (one per student), sorted by name; hidden ones left out."""
    if not folder.is_dir():
        raise GradingError(f"{folder} is not a folder: give the folder that holds one per student")
    found = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise GradingError(f"{folder} holds no submission folders (one folder per student)")
    return found


def shard(items: list[Path], spec: str | None) -> list[Path]:
    """``shard(items, "2/4")``: the second of four deterministic parts (by sorted name)."""
    if not spec:
        return items
    try:
        index, _, count = spec.partition("/")
        i, n = int(index), int(count)
        if not 1 <= i <= n:
            raise ValueError
    except ValueError:
        raise GradingError(f"--shard {spec!r}: write I/N with 1 <= I <= N, such as 2/4") from None
    ordered = sorted(items, key=lambda p: p.name)
    return [p for k, p in enumerate(ordered) if k % n == i - 1]


def content_hash(folder: Path) -> str:
    """A hash of every file's relative path and bytes (symlinks by their target)."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part in {".git", "__pycache__"} for part in relative.parts):
            continue
        digest.update(str(relative).encode() + b"\0")
        if path.is_symlink():
            digest.update(b"->" + os.readlink(path).encode())
        elif path.is_file():
            digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


# -- one unit -----------------------------------------------------------------------------


@dataclass
class UnitResult:
    """What one child pytest did for one submission and one lesson file."""

    file: str
    returncode: int | None
    seconds: float
    token: str = ""
    timed_out: bool = False
    cancelled: bool = False
    killed_leftovers: int = 0
    log_tail: str = ""
    experiments: list[Experiment] = field(default_factory=list)


class Cancelled(Exception):
    """Grading was interrupted (Ctrl-C)."""


class UnitRunner:
    """Runs child pytests and ends them and everything they started, on every path."""

    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.settings = settings
        self.workdir = workdir
        self.ini = workdir / "pytest.ini"
        #: the grader's own copy of the lessons and hidden experiments (``labs/``, ``extra/``)
        self.root = workdir / "lab"
        self.cancel = threading.Event()
        self._live: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._write_ini()

    def _write_ini(self) -> None:
        """The grader's own pytest configuration: the lab's, whatever a submission holds."""
        self.ini.write_text(
            "[pytest]\n"
            "python_files = [0-9][0-9]_*.py test_*.py *.py\n"
            f"pythonpath = {LAB_ROOT}\n"
            "addopts = -p mqtt_factory_lab.plugin --strict-markers\n"
            "timeout_method = signal\n"
            "junit_family = xunit2\n"
        )

    def command(self, file: Path, manifest: Path, jsonl: Path, extra: bool) -> list[str]:
        command = [
            sys.executable,
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
            "-q",
            "--no-header",
            "--no-points-summary",
            f"--timeout={self.settings.test_timeout:g}",
            f"--broker-backend={self.settings.backend}",
            f"--solution={manifest}",
            f"--points-jsonl={jsonl}",
        ]
        if not extra and self.settings.marker:
            command += ["-m", self.settings.marker]
        return [*command, str(file)]

    def run(
        self, file: Path, manifest: Path, workdir: Path, slot: int, extra: bool = False
    ) -> UnitResult:
        """Run ``file`` against ``manifest``; return its results, having killed every leftover."""
        if self.cancel.is_set():
            raise Cancelled
        token = uuid.uuid4().hex
        jsonl = workdir / f"{file.stem}.jsonl"
        log = workdir / f"{file.stem}.log"
        jsonl.unlink(missing_ok=True)
        cwd = workdir / "cwd"
        cwd.mkdir(exist_ok=True)
        limits = self.settings.limits
        uid = self.settings.uid_for(slot)
        if uid is not None:
            limits = replace(limits, uid=uid, gid=uid)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PYTEST_", "MQTT_LAB_", "PYTHON", "VF_"))
        }
        env.update({ENV_TOKEN: token, ENV_LIMITS: limits.to_env(), "PYTHONDONTWRITEBYTECODE": "1"})
        started = time.monotonic()
        timed_out = cancelled = False
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [*die_with_parent(), *self.command(file, manifest, jsonl, extra)],
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
            deadline = started + self.settings.lesson_timeout
            while True:
                try:
                    process.wait(timeout=max(0.0, min(0.5, deadline - time.monotonic())))
                    break
                except subprocess.TimeoutExpired:
                    if self.cancel.is_set():
                        cancelled = True
                        break
                    if time.monotonic() >= deadline:
                        timed_out = True
                        break
        finally:
            end(process)
            killed = sweep(token, limits.uid)
            with self._lock:
                self._live.pop(token, None)
        return UnitResult(
            file=file.name,
            token=token,
            returncode=process.returncode,
            seconds=time.monotonic() - started,
            timed_out=timed_out,
            cancelled=cancelled,
            killed_leftovers=killed,
            log_tail=_tail(log, 40),
            experiments=read_jsonl(jsonl),
        )

    def stop_all(self) -> None:
        """Cancel: end every running child pytest and whatever it started."""
        self.cancel.set()
        with self._lock:
            live = list(self._live.items())
        for token, process in live:
            end(process)
            sweep(token)  # (the slots' users are swept by the units themselves)


def end(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the lab's plugin then tears down like Ctrl-C), a grace period, then SIGKILL.

    The child pytest leads its own process group: SIGKILL goes to the whole group.
    """
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(GRACE_SECONDS)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5)


def sweep(token: str, uid: int | None = None) -> int:
    """Kill every process whose environment carries ``token`` or that runs as ``uid``.

    A program that forked children into new sessions escapes its process group and its
    parent-death signal; its environment still names the unit that started it. One that
    also cleared its environment still runs as the slot's own user (when the grader drops
    privileges). :returns: how many processes there were.
    """
    found: list[psutil.Process] = []
    me = os.getpid()
    for process in psutil.process_iter():
        if process.pid == me:
            continue
        with contextlib.suppress(psutil.Error):
            if (uid is not None and process.uids().real == uid) or process.environ().get(
                ENV_TOKEN
            ) == token:
                found.append(process)
    for process in found:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(found, timeout=5)
    return len(found)


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return ""
    return "\n".join(text[-lines:])


# -- one submission -------------------------------------------------------------------------


@dataclass
class SubmissionResult:
    """A graded submission: what ``runs/<student>.json`` holds."""

    student: str
    hash: str
    experiments: list[Experiment]
    units: list[dict[str, Any]] = field(default_factory=list)
    problem: str = ""
    seconds: float = 0.0
    graded_at: float = field(default_factory=time.time)
    reused: bool = False

    @property
    def lessons(self) -> dict[str, dict[str, Any]]:
        return summarize(self.experiments)

    @property
    def score(self) -> float:
        return round(sum(e["points"] for e in self.lessons.values()), 2)

    @property
    def max_score(self) -> float:
        return round(sum(e["max_points"] for e in self.lessons.values()), 2)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": RUN_FORMAT,
            "student": self.student,
            "hash": self.hash,
            "score": self.score,
            "max_score": self.max_score,
            "lessons": self.lessons,
            "problem": self.problem,
            "seconds": round(self.seconds, 2),
            "graded_at": self.graded_at,
            "units": self.units,
            "experiments": [e.to_dict() for e in self.experiments],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SubmissionResult:
        return cls(
            student=data["student"],
            hash=data["hash"],
            experiments=[Experiment.from_dict(e) for e in data["experiments"]],
            units=data.get("units", []),
            problem=data.get("problem", ""),
            seconds=data.get("seconds", 0.0),
            graded_at=data.get("graded_at", 0.0),
        )


def merge_with_plan(
    planned: list[Experiment], done: list[Experiment], reason: str
) -> list[Experiment]:
    """Every planned experiment once: its result, or 0 points with ``reason`` when it has none."""
    by_id = {e.nodeid: e for e in done}
    merged = []
    for plan in planned:
        result = by_id.pop(plan.nodeid, None)
        if result is None or result.outcome == "not run":
            result = replace(plan, points=0.0, outcome="not run", message=reason, output={})
        merged.append(result)
    return merged + list(by_id.values())


def unit_reason(unit: UnitResult, settings: Settings) -> str:
    """Why experiments of a unit have no result."""
    if unit.cancelled:
        return "grading was interrupted before this experiment ran"
    if unit.timed_out:
        return (
            f"the lesson run ({unit.file}) did not finish within {settings.lesson_timeout:g} s, "
            "so the grader stopped it: this experiment had not finished. Does a program of "
            "yours hang, or ignore SIGTERM?"
        )
    tail = "\n".join(unit.log_tail.splitlines()[-15:])
    return (
        f"the lesson run ({unit.file}) ended (exit status {unit.returncode}) before this "
        f"experiment finished. Its last output:\n{tail}"
    )


class ClassGrader:
    """Grades submissions into ``out``; reuses the runs of submissions that did not change."""

    def __init__(self, settings: Settings, out: Path, jobs: int | None = None) -> None:
        if psutil is None:
            raise GradingError(
                "grading a class needs psutil (to find every program a submission left "
                "running): pip install 'psutil>=7'"
            )
        self.settings = settings
        self.out = out
        self.jobs = max(1, jobs or os.cpu_count() or 1)
        self.runs = out / "runs"
        self.runs.mkdir(parents=True, exist_ok=True)
        self.fingerprint = settings.fingerprint()
        self._tmp = Path(tempfile.mkdtemp(prefix="mqtt-lab-grade-"))
        os.chmod(self._tmp, 0o755)
        self.units = UnitRunner(settings, self._tmp)
        # The grader's own copy of the lessons, made once: what every submission is graded
        # with, whatever happens to labs/ (or a student program) during the run.
        self.settings = settings = replace(
            settings,
            lessons=_copy_files(settings.lessons, self.units.root / "labs"),
            extra_tests=_copy_files(settings.extra_tests, self.units.root / "extra"),
        )
        self.plan: dict[str, list[Experiment]] = {}

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)

    # -- the plan: the experiments and their points, collected once --------------------
    def collect_plan(self) -> dict[str, list[Experiment]]:
        """Collect every unit's experiments (with the reference solution) without running them."""
        for file, extra in self._files():
            plan = self._tmp / f"plan-{file.stem}.json"
            command = self.units.command(file, _reference_manifest(), self._tmp / "x.jsonl", extra)
            command = [c for c in command if not c.startswith("--solution=")]
            done = subprocess.run(
                [*command, "--collect-only", f"--points-plan={plan}"],
                cwd=self._tmp,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            if not plan.exists() or done.returncode not in (0, 5):
                raise GradingError(
                    f"cannot collect the experiments of {file}:\n{done.stdout[-3000:]}{done.stderr[-2000:]}"
                )
            self.plan[file.name] = read_plan(plan)
        return self.plan

    def _files(self) -> list[tuple[Path, bool]]:
        return [(p, False) for p in self.settings.lessons] + [
            (p, True) for p in self.settings.extra_tests
        ]

    # -- one submission -----------------------------------------------------------------
    def grade_one(self, folder: Path, slot: int) -> SubmissionResult:
        student = folder.name
        started = time.monotonic()
        digest = hashlib.sha256((content_hash(folder) + self.fingerprint).encode()).hexdigest()
        work = self._tmp / f"s{slot}-{uuid.uuid4().hex[:8]}"
        copy = work / "submission"
        try:
            self._copy(folder, copy, slot)
            load(copy / "solution.toml")
        except ManifestError as error:
            shutil.rmtree(work, ignore_errors=True)
            message = str(error).replace(str(copy), student)
            return self._all_zero(
                student, digest, f"the solution manifest cannot be used: {message}"
            )
        except SubmissionTooLarge as error:
            shutil.rmtree(work, ignore_errors=True)
            return self._all_zero(student, digest, str(error))
        experiments: list[Experiment] = []
        units: list[dict[str, Any]] = []
        try:
            for file, extra in self._files():
                unit = self.units.run(file, copy / "solution.toml", work, slot, extra)
                experiments += merge_with_plan(
                    self.plan[file.name], unit.experiments, unit_reason(unit, self.settings)
                )
                record = asdict(unit)
                record.pop("experiments")
                units.append(record)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        for exp in experiments:  # the copy's path means nothing to the student: their folder
            exp.message = exp.message.replace(str(copy), student)
            exp.output = {k: v.replace(str(copy), student) for k, v in exp.output.items()}
        problems = []
        for unit_record in units:
            if unit_record["timed_out"]:
                problems.append(
                    f"{unit_record['file']}: stopped after {self.settings.lesson_timeout:g} s"
                )
            if unit_record["killed_leftovers"]:
                problems.append(
                    f"{unit_record['file']}: {unit_record['killed_leftovers']} programs were "
                    "still running after the lesson and were killed"
                )
        return SubmissionResult(
            student,
            digest,
            experiments,
            units,
            problem="; ".join(problems),
            seconds=time.monotonic() - started,
        )

    def _all_zero(self, student: str, digest: str, reason: str) -> SubmissionResult:
        experiments = [
            replace(p, points=0.0, outcome="error", message=reason)
            for file, _ in self._files()
            for p in self.plan[file.name]
        ]
        return SubmissionResult(student, digest, experiments, problem=reason.splitlines()[0])

    def _copy(self, folder: Path, target: Path, slot: int) -> Path:
        size = sum(
            p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()
        )
        if size > MAX_SUBMISSION_BYTES:
            raise SubmissionTooLarge(
                f"the submission holds {size // 2**20} MiB of files; the grader copies at most "
                f"{MAX_SUBMISSION_BYTES // 2**20} MiB: leave out data and build output"
            )
        shutil.copytree(folder, target, symlinks=True, ignore=IGNORED)
        uid = self.settings.uid_for(slot)
        if uid is not None:
            # the programs' user owns the copy (they may write in their own folder); no one
            # else may enter it (another slot's programs run as another user)
            os.chmod(target.parent, 0o755)
            for path in [target, *target.rglob("*")]:
                with contextlib.suppress(OSError):
                    os.chown(path, uid, uid, follow_symlinks=False)
            os.chmod(target, 0o700)
        return target

    def cached(self, folder: Path) -> SubmissionResult | None:
        path = self.runs / f"{folder.name}.json"
        if not path.exists():
            return None
        try:
            previous = SubmissionResult.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError):
            return None
        digest = hashlib.sha256((content_hash(folder) + self.fingerprint).encode()).hexdigest()
        if previous.hash != digest:
            return None
        previous.reused = True
        return previous

    def save(self, result: SubmissionResult) -> None:
        path = self.runs / f"{result.student}.json"
        path.write_text(json.dumps(result.to_dict(), indent=2) + "\n")

    # -- the class ----------------------------------------------------------------------
    def grade(self, folders: list[Path], progress: Any | None = None) -> list[SubmissionResult]:
        """Grade ``folders`` (reusing unchanged ones), ``self.jobs`` at a time."""
        if not self.plan:
            self.collect_plan()
        results: dict[str, SubmissionResult] = {}
        todo = []
        for folder in folders:
            previous = self.cached(folder)
            if previous is not None:
                results[folder.name] = previous
            else:
                todo.append(folder)
        if progress is not None:
            progress.begin(len(todo), reused=len(results), jobs=self.jobs)
        free_slots = list(range(self.jobs))
        slots_lock = threading.Lock()

        def task(folder: Path) -> SubmissionResult:
            with slots_lock:
                slot = free_slots.pop()
            try:
                if progress is not None:
                    progress.started(folder.name)
                return self.grade_one(folder, slot)
            finally:
                if progress is not None:
                    progress.stopped(folder.name)
                with slots_lock:
                    free_slots.append(slot)

        pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="grade")
        futures: dict[Future[SubmissionResult], Path] = {}
        try:
            futures = {pool.submit(task, folder): folder for folder in todo}
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                for future in finished:
                    result = future.result()
                    self.save(result)
                    results[result.student] = result
                    if progress is not None:
                        progress.finished(result)
                if progress is not None:
                    progress.tick()
        except BaseException:
            self.units.stop_all()
            for future in futures:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        if progress is not None:
            progress.end()
        return [results[f.name] for f in folders]


class SubmissionTooLarge(Exception):
    pass


def _copy_files(files: tuple[Path, ...], folder: Path) -> tuple[Path, ...]:
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for path in files:
        shutil.copy2(path, folder / path.name)
        copies.append(folder / path.name)
    return tuple(copies)


def _reference_manifest() -> Path:
    return LAB_ROOT / "solution.toml"


def lesson_columns(results: list[SubmissionResult]) -> list[str]:
    keys = {lesson_key(e.lesson) for r in results for e in r.experiments}
    return sorted(keys, key=lambda k: (k == "extra", k))
