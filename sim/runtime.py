"""What every factory program does around its MQTT work: log, say it is ready, stop on a signal.

The programs (``sim.device``, ``sim.controller``, ``sim.observer``, ``sim.cli``,
``sim.bad_actor``, ``sim.run_all``) keep one contract with whoever starts them,
a student's shell, ``sim.run_all`` or the test harness:

* stdout is the program's output and starts with one ``ready <id>`` line
  (:func:`print_ready`, :data:`READY`) once the program does what it is for,
  so a caller waits for that line instead of sleeping; logs go to stderr
  (:func:`setup_logging`), whole lines only, from any thread (:func:`write_line`);
* SIGTERM and Ctrl-C end a long-running program cleanly (:class:`StopSignals`):
  it leaves its loop, publishes what it owes (a device its ``offline``
  status), disconnects and exits 0. A short run is interrupted instead
  (:func:`interrupt_on_sigterm`);
* a bad ``VF_*`` variable is a usage error, like a bad flag (:func:`broker_settings`).

Part of the reference solution, so it needs only the standard library and
:mod:`sim.connection` (never the test harness, which students' programs do not have).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType, TracebackType
from typing import Any, TextIO

from sim.connection import BrokerSettings, tls_files_problem

#: the line a program prints on stdout once it is ready; group 1 is its id
READY = re.compile(r"^ready (\S+)\s*$")

#: taken for every line written, output or log record. Reentrant, so that a
#: KeyboardInterrupt raised (by a signal) in the middle of a write cannot
#: leave it held against the main thread's next line.
_OUTPUT_LOCK = threading.RLock()


def write_line(line: str, out: TextIO | None = None) -> None:
    """Write ``line`` and a newline to ``out`` (default stdout) in one piece, and flush.

    paho's network thread prints messages while the main thread logs; the lock,
    shared with the log handler of :func:`setup_logging`, keeps a line of one
    from cutting into a line of the other, even when stdout and stderr go to
    the same file (as they do under the test harness).
    """
    stream = sys.stdout if out is None else out
    with _OUTPUT_LOCK:
        stream.write(line + "\n")
        stream.flush()


def print_ready(program_id: str, out: TextIO | None = None) -> None:
    """Print ``ready <program_id>``: from now on the program does its job.

    Print it only when that is true (a device is online and subscribed to its
    commands, a subscriber's SUBACK has arrived), so that whoever waited for
    the line can publish at once and nothing is missed.
    """
    write_line(f"ready {program_id}", out)


class _LockedStreamHandler(logging.StreamHandler):
    """A stderr handler that takes the output lock, so log lines stay whole (see :func:`write_line`)."""

    def emit(self, record: logging.LogRecord) -> None:
        with _OUTPUT_LOCK:
            super().emit(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per log line (``--log-format json``), for log collectors and tests.

    :param fields: constant fields every line carries (a device adds its ``device_id``).
    :param extras: record attributes copied when a record has them (the controller logs
        each decision as ``log.info(..., extra={"decision": event})``).
    """

    def __init__(
        self, fields: dict[str, Any] | None = None, extras: Sequence[str] = ("decision",)
    ) -> None:
        super().__init__()
        self.fields = dict(fields or {})
        self.extras = tuple(extras)

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            **self.fields,
            "message": record.getMessage(),
        }
        for name in self.extras:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


def add_log_level(parser: argparse.ArgumentParser) -> None:
    """The ``--log-level`` option every program has (stderr log level, default INFO)."""
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="stderr log level (default INFO)",
    )


def setup_logging(fmt: str | logging.Formatter, level: int | str = logging.INFO) -> None:
    """Send every log record of ``level`` and above to stderr, formatted by ``fmt``.

    stderr, because stdout is the program's output (the ready line, messages,
    reports) that a pipe or a test reads. Any handler already on the root
    logger is replaced: one program, one log stream.

    :param fmt: a :class:`logging.Formatter`, or a format string for one.
    """
    handler = _LockedStreamHandler(sys.stderr)
    handler.setFormatter(fmt if isinstance(fmt, logging.Formatter) else logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class StopSignals:
    """While active, SIGTERM and SIGINT (or ``signals``) only record that a stop was asked.

    The program then leaves its main loop at its next check and cleans up::

        with StopSignals() as stop:
            connect(client, settings)
            try:
                print_ready("controller")
                stop.wait()  # until SIGTERM or Ctrl-C
            finally:
                client.disconnect()  # what a program killed by the signal would skip

    The handler only appends to a list. Python runs a signal handler in the
    main thread between two bytecodes, possibly while that thread holds a lock
    (inside ``threading.Event``, ``queue.Queue``, a log handler): a handler
    that took the same lock would deadlock. Appending to a list takes none.
    Leaving the ``with`` block puts the previous handlers back.

    :param signals: the signals that mean "stop" (``sim.run_all`` adds SIGHUP).
    :param wake: also called with the signal number, to wake a loop that
        blocks on something else than a poll; it must be safe in a signal
        handler (``queue.SimpleQueue.put`` is, most things that lock are not).
    """

    def __init__(
        self,
        signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT),
        *,
        wake: Callable[[int], object] | None = None,
    ) -> None:
        self.signals = tuple(signals)
        self.received: list[int] = []
        self._wake = wake
        self._previous: dict[int, Any] = {}

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        if self._wake is not None:
            self._wake(signum)

    @property
    def requested(self) -> bool:
        """Whether a stop signal has arrived."""
        return bool(self.received)

    @property
    def signum(self) -> int | None:
        """The first stop signal received, if any."""
        return self.received[0] if self.received else None

    def wait(
        self,
        timeout: float | None = None,
        *,
        until: threading.Event | None = None,
        every: float = 0.0,
        tick: Callable[[], object] | None = None,
    ) -> bool:
        """Return once a stop signal arrived or ``until`` is set: True; or ``timeout`` passed: False.

        The program's main loop. It looks at the signals every 0.1 s: it cannot
        be woken by them, since the handler must not set an event.

        :param until: the program's own "done" (the observer's ``--count`` reached).
        :param tick: called every ``every`` seconds meanwhile (periodic statistics).
        """
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        next_tick = started + every if tick is not None and every > 0 else None
        while not self.requested and not (until is not None and until.is_set()):
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            if tick is not None and next_tick is not None and now >= next_tick:
                tick()
                next_tick += every
            wake = min(t for t in (deadline, next_tick, now + 0.1) if t is not None)
            if until is not None:
                until.wait(max(0.0, wake - now))
            else:
                time.sleep(max(0.0, wake - now))
        return True

    def __enter__(self) -> StopSignals:
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def interrupt_on_sigterm() -> None:
    """Make SIGTERM raise :class:`KeyboardInterrupt`, as Ctrl-C does.

    For a short run with no main loop to leave (``sim.bad_actor``): the
    exception unwinds it at once, through the ``finally`` blocks that disconnect.
    """
    signal.signal(signal.SIGTERM, _interrupt)


def broker_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> BrokerSettings:
    """The broker settings from the flags and the ``VF_*`` variables.

    A bad variable (``VF_BROKER_PORT=abc``) ends the program like a bad flag:
    the usage line, the reason, exit status 2.
    """
    try:
        settings = BrokerSettings.from_args(args)
    except ValueError as error:
        parser.error(str(error))
    problem = tls_files_problem(settings)  # a CA, certificate or key that cannot be used
    if problem:
        parser.error(problem)
    return settings
