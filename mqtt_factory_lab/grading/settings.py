"""What a class is graded with: the lessons, hidden experiments, limits and options.

:class:`Settings` is part of every submission's hash (a change re-grades); the ``discover_*``
functions turn the command line into lesson files, hidden experiments and submission
folders, each with one sentence when something is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mqtt_factory_lab.core.limits import Limits
from mqtt_factory_lab.core.paths import LABS_DIR

#: first uid for student programs when the grader runs as root (one per parallel slot)
UID_BASE = 64200


#: submissions graded at once per core by default: a submission waits on its lessons'
#: deadlines for ~40 % of its wall time and computes the rest (brokers, student programs,
#: the child pytest), so three per core keep two cores busy (docs/performance.md, Grading)
JOBS_PER_CORE = 3
#: the memory a submission being graded may take (child pytest, brokers, student programs,
#: at most their --memory-mb each): ``-j`` by default leaves this much per job
MEMORY_PER_JOB = 1024 * 2**20


def default_jobs(cores: int | None = None, available: int | None = None) -> int:
    """``-j`` by default: :data:`JOBS_PER_CORE` per core this process may run on, as many as
    the available memory gives :data:`MEMORY_PER_JOB` each, at least one."""
    if cores is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            cores = os.cpu_count() or 1
    jobs = JOBS_PER_CORE * max(1, cores)
    if available is None:
        try:
            import psutil

            available = psutil.virtual_memory().available
        except ImportError:  # pragma: no cover - the grader refuses to run without psutil
            available = None
    if available is not None:
        jobs = min(jobs, available // MEMORY_PER_JOB)
    return max(1, jobs)


class GradingError(RuntimeError):
    """The grader cannot run at all (no lessons, a bad option); the message says what to do."""


@dataclass(frozen=True)
class Settings:
    """How a class is graded; part of every submission's hash, so a change re-grades.

    :ivar isolate_network: give each lesson run a network namespace of its own (loopback
        only), where the machine allows it (see :mod:`~mqtt_factory_lab.grading.sandbox`).
    """

    lessons: tuple[Path, ...]
    extra_tests: tuple[Path, ...] = ()
    marker: str = "solution"
    lesson_timeout: float = 180.0
    #: seconds a whole submission may take (every lesson and hidden experiment); ``None``:
    #: no limit but the lessons'. A hanging submission otherwise holds its slot for up to
    #: one ``lesson_timeout`` per lesson.
    submission_timeout: float | None = 600.0
    test_timeout: float = 60.0
    limits: Limits = field(default_factory=Limits)
    backend: str = "local"
    run_as_uid_base: int | None = UID_BASE
    isolate_network: bool = True

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
            "submission_timeout": self.submission_timeout,
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
