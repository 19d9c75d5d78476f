"""Grade a class: every submission in isolation, several at once, nothing left running.

:class:`ClassGrader` prepares once what every submission is graded with — the grader's
private copy of the lessons and hidden experiments, the plan of experiments and their
points, a Python the student's user can read, and whether lesson runs get a network
namespace of their own — then grades each submission (:mod:`.submission`): all its lessons in
one child pytest, each lesson held to its own limit (:mod:`.unit`), ``jobs`` at a time,
reusing the runs of submissions that did not change.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from mqtt_factory_lab.core.paths import LAB_ROOT
from mqtt_factory_lab.core.solution import ManifestError, load
from mqtt_factory_lab.grading import sandbox
from mqtt_factory_lab.grading.points import Experiment, lesson_key, read_plan
from mqtt_factory_lab.grading.sandbox import ReadableRuntime
from mqtt_factory_lab.grading.settings import (
    GradingError,
    Settings,
    content_hash,
    default_jobs,
)
from mqtt_factory_lab.grading.submission import (
    SubmissionResult,
    SubmissionTooLarge,
    copy_submission,
    merge_with_plan,
    unit_reason,
)
from mqtt_factory_lab.grading.unit import UnitRunner


class ClassGrader:
    """Grades submissions into ``out``; reuses the runs of submissions that did not change.

    :ivar runtime: the world-readable Python the child pytests and student programs use, when
        the student's user cannot run the lab's own (``None``: the lab's own).
    :ivar privileges: "" when student programs run as the slots' users, else why not.
    :ivar network: "" when each lesson run has a network namespace of its own, else why not.
    """

    def __init__(self, settings: Settings, out: Path, jobs: int | None = None) -> None:
        if sandbox.psutil is None:
            raise GradingError(
                "grading a class needs psutil (to find every program a submission left "
                "running): pip install 'psutil>=7'"
            )
        self.out = out
        self.jobs = max(1, jobs or default_jobs())
        self.runs = out / "runs"
        self.runs.mkdir(parents=True, exist_ok=True)
        self.fingerprint = settings.fingerprint()
        # The grader's folder: students' users may pass through it to their own copy
        # (0711), never list it nor read the lessons, hidden experiments, logs or results.
        self._tmp = Path(tempfile.mkdtemp(prefix="mqtt-lab-grade-"))
        os.chmod(self._tmp, 0o711)
        self.runtime: ReadableRuntime | None = None
        self._uid_locks: list[Any] = []
        if settings.uid_for(0) is not None:  # uids no other grader on the machine uses
            try:
                base, self._uid_locks = sandbox.claim_uids(settings.uid_for(0), self.jobs)
            except RuntimeError as error:
                raise GradingError(f"{error}: pass --run-as-uid with another range") from None
            settings = replace(settings, run_as_uid_base=base)
        self.privileges = self._prepare_python(settings)
        if self.privileges:
            settings = replace(settings, run_as_uid_base=None)
        python = self.runtime.python if self.runtime else sys.executable
        self.network = self._network_problem(settings, python)
        self.settings = settings
        self.units = UnitRunner(
            settings,
            self._tmp,
            python=python,
            lab_root=self.runtime.lab_root if self.runtime else LAB_ROOT,
            env=self.runtime.env if self.runtime else {},
            isolate_network=not self.network,
        )
        # The grader's own copy of the lessons, made once: what every submission is graded
        # with, whatever happens to labs/ (or a student program) during the run.
        self.settings = replace(
            settings,
            lessons=_copy_files(settings.lessons, self.units.root / "labs"),
            extra_tests=_copy_files(settings.extra_tests, self.units.root / "extra"),
        )
        self.plan: dict[str, list[Experiment]] = {}

    def _prepare_python(self, settings: Settings) -> str:
        """Make sure the slots' users can run a Python with the lab; "" or why they cannot."""
        uid = settings.uid_for(0)
        if uid is None:
            return ""
        if not sandbox.unprivileged_python_problem(uid):
            return ""
        leave_out = tuple({p.parent for p in settings.extra_tests})
        root = Path(tempfile.mkdtemp(prefix="mqtt-lab-runtime-"))
        self.runtime = ReadableRuntime.build(root, leave_out)
        problem = sandbox.unprivileged_python_problem(uid, self.runtime.python, self.runtime.env)
        if problem:
            shutil.rmtree(root, ignore_errors=True)
            self.runtime = None
            return (
                f"user {uid} cannot run the lab's Python, nor the readable copy the grader "
                f"made of it ({problem})"
            )
        return ""

    def _network_problem(self, settings: Settings, python: str) -> str:
        if not settings.isolate_network:
            return "turned off (--share-network)"
        if settings.backend != "local":
            return f"the {settings.backend} backend's brokers live outside a lesson run's namespace"
        return sandbox.network_problem(python)

    def isolation(self, slot: int) -> str:
        """One line for a report's header: how this submission's programs were kept apart."""
        network = (
            "network: a namespace of its own (loopback only; no other submission's broker)"
            if not self.network
            else f"network: NOT isolated — shared with the machine and the other submissions "
            f"({self.network})"
        )
        uid = self.settings.uid_for(slot)
        if uid is not None:
            user = f"programs ran as user {uid}"
        elif os.geteuid() == 0:
            user = "programs ran as ROOT" + (f" ({self.privileges})" if self.privileges else "")
        else:
            user = "programs ran as the grader's user"
        return f"{network}; {user}"

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)
        for lock in self._uid_locks:
            lock.close()
        self._uid_locks = []
        if self.runtime is not None:
            shutil.rmtree(self.runtime.root, ignore_errors=True)

    # -- the plan: the experiments and their points, collected once --------------------
    def collect_plan(self) -> dict[str, list[Experiment]]:
        """Collect every unit's experiments (with the reference solution) without running them.

        One ``--collect-only`` child for the lessons and one for the hidden experiments (which
        run without the marker filter), at once: each is mostly interpreter and plugin
        start-up. They write the bytecode of the lessons and the plugin, which every
        submission's child then reads instead of compiling and rewriting them again.
        """
        groups = [(files, extra) for files, extra in self._groups() if files]
        with ThreadPoolExecutor(max_workers=max(1, len(groups)), thread_name_prefix="plan") as pool:
            plans = list(pool.map(lambda group: self._collect(*group), groups))
        for (files, _), plan in zip(groups, plans, strict=True):
            for file in files:
                self.plan[file.name] = [e for e in plan if _file_of(e.nodeid) == file.name]
        return self.plan

    def _collect(self, files: list[Path], extra: bool) -> list[Experiment]:
        name = "extra" if extra else "lessons"
        plan = self._tmp / f"plan-{name}.json"
        command = self.units.command(
            files, _reference_manifest(), self._tmp / f"plan-{name}.jsonl", extra
        )
        command = [c for c in command if not c.startswith("--solution=")]
        # The one child that writes bytecode: the lessons' (assertion-rewritten) and the
        # plugin's, in the grader's copies; the children of every submission read it.
        env = self.units.environment("plan", "")
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        done = subprocess.run(
            [*command, "--collect-only", f"--points-plan={plan}"],
            cwd=self._tmp,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if not plan.exists() or done.returncode not in (0, 5):
            where = ", ".join(str(f) for f in files)
            raise GradingError(
                f"cannot collect the experiments of {where}:\n{done.stdout[-3000:]}{done.stderr[-2000:]}"
            )
        plan.chmod(0o600)
        return read_plan(plan)

    def _groups(self) -> list[tuple[list[Path], bool]]:
        """The lesson files (one child pytest runs them all) and the hidden experiments' files
        (another: they run without the lessons' marker filter)."""
        return [(list(self.settings.lessons), False), (list(self.settings.extra_tests), True)]

    def _files(self) -> list[tuple[Path, bool]]:
        return [(p, extra) for files, extra in self._groups() for p in files]

    # -- one submission -----------------------------------------------------------------
    def grade_one(self, folder: Path, slot: int, progress: Any | None = None) -> SubmissionResult:
        student = folder.name
        started = time.monotonic()
        digest = hashlib.sha256((content_hash(folder) + self.fingerprint).encode()).hexdigest()
        work = self._tmp / f"s{slot}-{uuid.uuid4().hex[:8]}"
        copy = work / "submission"
        isolation = self.isolation(slot)
        try:
            copy_submission(folder, copy, self.settings.uid_for(slot))
            load(copy / "solution.toml")
        except ManifestError as error:
            shutil.rmtree(work, ignore_errors=True)
            message = str(error).replace(str(copy), student)
            return self._all_zero(
                student, digest, f"the solution manifest cannot be used: {message}", isolation
            )
        except SubmissionTooLarge as error:
            shutil.rmtree(work, ignore_errors=True)
            return self._all_zero(student, digest, str(error), isolation)
        experiments: list[Experiment] = []
        units: list[dict[str, Any]] = []
        finished = 0
        limit = self.settings.submission_timeout
        deadline = started + limit if limit else None

        def advanced(count: int) -> None:
            if progress is not None:
                progress.advanced(student, finished + count)

        try:
            for files, extra in self._groups():
                if not files:
                    continue
                ran = self.units.run_lessons(
                    files, copy / "solution.toml", work, slot, extra,
                    on_experiment=advanced, deadline=deadline,
                )  # fmt: skip
                for unit in ran:
                    experiments += merge_with_plan(
                        self.plan[unit.file], unit.experiments, unit_reason(unit, self.settings)
                    )
                    finished += len(unit.experiments)
                    record = asdict(unit)
                    record.pop("experiments")
                    units.append(record)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        for exp in experiments:  # the copy's path means nothing to the student: their folder
            exp.message = exp.message.replace(str(copy), student)
            exp.output = {k: v.replace(str(copy), student) for k, v in exp.output.items()}
        problems = []
        stopped = next((u for u in units if u["out_of_time"]), None)
        if stopped is not None:  # once: the lessons after it were not run
            where = "during" if stopped["timed_out"] else "before"
            problems.append(
                f"stopped at the submission's time limit ({limit:g} s) {where} {stopped['file']}"
            )
        for unit_record in units:
            if unit_record["out_of_time"]:
                continue
            if unit_record["timed_out"]:
                problems.append(
                    f"{unit_record['file']}: stopped after {self.settings.lesson_timeout:g} s"
                )
            elif unit_record["killed_leftovers"]:  # a lesson stopped mid-way leaves its own
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
            isolation=isolation,
        )

    def _all_zero(
        self, student: str, digest: str, reason: str, isolation: str = ""
    ) -> SubmissionResult:
        experiments = [
            replace(p, points=0.0, outcome="error", message=reason)
            for file, _ in self._files()
            for p in self.plan[file.name]
        ]
        return SubmissionResult(
            student, digest, experiments, problem=reason.splitlines()[0], isolation=isolation
        )

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
            progress.begin(
                len(todo),
                reused=len(results),
                jobs=self.jobs,
                experiments=sum(len(p) for p in self.plan.values()),
            )
        free_slots = list(range(self.jobs))
        slots_lock = threading.Lock()

        def task(folder: Path) -> SubmissionResult:
            with slots_lock:
                slot = free_slots.pop()
            try:
                if progress is not None:
                    progress.started(folder.name)
                return self.grade_one(folder, slot, progress)
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


def _copy_files(files: tuple[Path, ...], folder: Path) -> tuple[Path, ...]:
    """Copies of ``files`` in ``folder`` (inside the grader's private lab copy: root's only)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    copies = []
    for path in files:
        shutil.copy2(path, folder / path.name)
        (folder / path.name).chmod(0o600)
        copies.append(folder / path.name)
    return tuple(copies)


def _file_of(nodeid: str) -> str:
    return Path(nodeid.split("::")[0]).name


def _reference_manifest() -> Path:
    return LAB_ROOT / "solution.toml"


def lesson_columns(results: list[SubmissionResult]) -> list[str]:
    keys = {lesson_key(e.lesson) for r in results for e in r.experiments}
    return sorted(keys, key=lambda k: (k == "extra", k))
