"""One graded submission: its private copy, its result (``runs/<student>.json``), and how the
results of its lesson runs merge with the plan of experiments."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mqtt_factory_lab.grading.points import Experiment, summarize
from mqtt_factory_lab.grading.settings import Settings
from mqtt_factory_lab.grading.unit import UnitResult

#: the format name of a run's JSON (``runs/<student>.json``)
RUN_FORMAT = "mqtt-factory-lab/grade-run/1"
#: folders and files a submission copy leaves out
IGNORED = shutil.ignore_patterns(".git", "__pycache__", "*.pyc", ".venv", "venv", "node_modules")
#: largest submission the grader copies, in bytes
MAX_SUBMISSION_BYTES = 50 * 1024 * 1024


class SubmissionTooLarge(Exception):
    pass


@dataclass
class SubmissionResult:
    """A graded submission: what ``runs/<student>.json`` holds.

    :ivar isolation: how its programs were kept apart, in one line for its report's header
        (network namespace or not, and why; the user they ran as).
    """

    student: str
    hash: str
    experiments: list[Experiment]
    units: list[dict[str, Any]] = field(default_factory=list)
    problem: str = ""
    seconds: float = 0.0
    graded_at: float = field(default_factory=time.time)
    reused: bool = False
    isolation: str = ""

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
            "isolation": self.isolation,
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
            isolation=data.get("isolation", ""),
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
    if unit.out_of_time:
        if not unit.timed_out:  # the limit ran out before this lesson could start
            return (
                f"the grader stopped this submission at its time limit of "
                f"{settings.submission_timeout:g} s before {unit.file} ran: did a program "
                "of yours hang, or ignore SIGTERM, in a lesson before?"
            )
        return (
            f"the submission's grading did not finish within its time limit of "
            f"{settings.submission_timeout:g} s, so the grader stopped it during {unit.file}: "
            "this experiment had not finished. Does a program of yours hang, or ignore SIGTERM?"
        )
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


def copy_submission(folder: Path, target: Path, uid: int | None) -> Path:
    """The grader's copy of ``folder``: symlinks kept as links (a manifest's ``[files]`` must
    resolve inside it), owned by ``uid`` and closed to every other user but root.

    :raises SubmissionTooLarge: past :data:`MAX_SUBMISSION_BYTES`.
    """
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    if size > MAX_SUBMISSION_BYTES:
        raise SubmissionTooLarge(
            f"the submission holds {size // 2**20} MiB of files; the grader copies at most "
            f"{MAX_SUBMISSION_BYTES // 2**20} MiB: leave out data and build output"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    # the work folder: the programs' user may pass through to its copy, not list it
    os.chmod(target.parent, 0o711)
    shutil.copytree(folder, target, symlinks=True, ignore=IGNORED)
    if uid is not None:
        # the programs' user owns the copy (they may write in their own folder); no one
        # else may enter it (another slot's programs run as another user)
        for path in [target, *target.rglob("*")]:
            with contextlib.suppress(OSError):
                os.chown(path, uid, uid, follow_symlinks=False)
    os.chmod(target, 0o700)
    return target
