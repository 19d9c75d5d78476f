"""The grader's progress line: done / running / left, elapsed and estimated time left.

The estimate: once a submission is graded, the mean time of those graded so far, for the
submissions left (less what the running ones have already spent), ``jobs`` at a time; before
that, the rate at which the running ones get through their experiments (each submission has
the same plan of experiments), so an estimate shows from the first finished experiment.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from mqtt_factory_lab.grading.submission import SubmissionResult


def _clock(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 60}:{whole % 60:02d}"


class Progress:
    """Prints progress to ``stream``: one line rewritten on a terminal, a line per change elsewhere."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.lock = threading.Lock()
        self.total = self.done = self.reused = self.jobs = 0
        self.running: set[str] = set()
        #: when each running submission started, and how many of its experiments are done
        self.since: dict[str, float] = {}
        self.progress: dict[str, int] = {}
        self.experiments = 0
        self.seconds: list[float] = []
        self.started_at = time.monotonic()
        self._last = ""

    def begin(self, total: int, *, reused: int, jobs: int, experiments: int = 0) -> None:
        """``experiments``: how many each submission runs (the plan), for the first estimate."""
        self.total, self.reused, self.jobs = total, reused, jobs
        self.experiments = experiments
        self.started_at = time.monotonic()
        if reused:
            self._line(f"{reused} unchanged submissions reused from the last run", final=True)
        self._show()

    def started(self, student: str) -> None:
        with self.lock:
            self.running.add(student)
            self.since[student] = time.monotonic()
            self.progress[student] = 0
        self._show()

    def advanced(self, student: str, experiments: int) -> None:
        """``student``'s run has finished ``experiments`` of its experiments."""
        with self.lock:
            if student in self.running:
                self.progress[student] = experiments

    def stopped(self, student: str) -> None:
        """The submission's grading thread is done with it (its result is reported next)."""
        with self.lock:
            self.running.discard(student)
            self.since.pop(student, None)
            self.progress.pop(student, None)

    def finished(self, result: SubmissionResult) -> None:
        with self.lock:
            self.running.discard(result.student)
            self.since.pop(result.student, None)
            self.progress.pop(result.student, None)
            self.done += 1
            if result.seconds > 0:
                self.seconds.append(result.seconds)
        note = f" ({result.problem})" if result.problem else ""
        self._line(
            f"{result.student}: {result.score:g} of {result.max_score:g} points "
            f"in {result.seconds:.1f} s{note}",
            final=True,
        )
        self._show()

    def tick(self) -> None:
        if self.tty:
            self._show()

    def end(self) -> None:
        self._show(final=True)

    def estimate(self) -> str:
        """The time left, as ``m:ss`` (``?`` until there is something to go by)."""
        now = time.monotonic()
        jobs = max(1, self.jobs)
        waiting = max(0, self.total - self.done - len(self.running))
        if self.seconds:
            mean = sum(self.seconds) / len(self.seconds)
            work = waiting * mean + sum(max(0.0, mean - (now - t)) for t in self.since.values())
            return _clock(work / min(jobs, max(1, waiting + len(self.running))))
        done = sum(self.progress.values())
        if not self.experiments or not done or not self.since:
            return "?"
        spent = sum(now - t for t in self.since.values())  # submission-seconds so far
        per_experiment = spent / done
        work = (self.total * self.experiments - done) * per_experiment
        return _clock(work / min(jobs, max(1, self.total - self.done)))

    def _show(self, final: bool = False) -> None:
        with self.lock:
            left = self.total - self.done - len(self.running)
            text = (
                f"graded {self.done}/{self.total} · running {len(self.running)} · left {left} · "
                f"{_clock(time.monotonic() - self.started_at)} elapsed · ~{self.estimate()} left"
            )
        if text != self._last or final:
            self._line(text, final=final or not self.tty)

    def _line(self, text: str, final: bool) -> None:
        with self.lock:
            if self.tty:
                self.stream.write("\r\033[K" + text + ("\n" if final else ""))
            elif text != self._last:
                self.stream.write(text + "\n")
            self._last = text
            self.stream.flush()
