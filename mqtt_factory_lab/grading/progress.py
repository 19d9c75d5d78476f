"""The grader's progress line: done / running / left, elapsed and estimated time left."""

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
        self.started_at = time.monotonic()
        self._last = ""

    def begin(self, total: int, *, reused: int, jobs: int) -> None:
        self.total, self.reused, self.jobs = total, reused, jobs
        self.started_at = time.monotonic()
        if reused:
            self._line(f"{reused} unchanged submissions reused from the last run", final=True)
        self._show()

    def started(self, student: str) -> None:
        with self.lock:
            self.running.add(student)
        self._show()

    def stopped(self, student: str) -> None:
        """The submission's grading thread is done with it (its result is reported next)."""
        with self.lock:
            self.running.discard(student)

    def finished(self, result: SubmissionResult) -> None:
        with self.lock:
            self.running.discard(result.student)
            self.done += 1
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
        elapsed = time.monotonic() - self.started_at
        if not self.done:
            return "?"
        per_submission = elapsed / self.done
        left = self.total - self.done
        return _clock(per_submission * left)

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
