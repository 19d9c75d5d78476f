"""Programs the lab runs — brokers and a solution's roles — started, awaited and always stopped.

One home for what every child process of the lab needs:

* it runs in a **session of its own**, so a Ctrl-C in the terminal reaches only
  pytest, which then stops its children in order;
* it gets a **parent-death signal** (``setpriv --pdeathsig TERM``, util-linux), so
  even a ``kill -9`` of pytest leaves nothing running; elsewhere teardown and the
  ``atexit`` registry below do the work;
* everything it prints goes to a **file**, which a failure message can quote;
* it is stopped with **SIGTERM, then SIGKILL** after a grace period, sent to its whole
  process group: a wrapper (``sh run.sh``) and the program it started stop together.

:func:`wait_until` is the one deadline loop the harness uses for conditions that
have no event to wait on (a line in a file, a broker that answers); :func:`wait_reaped` waits
for a program's exit itself (a pidfd), waking the moment it happens.

Example::

    with ChildProcess(["mosquitto", "-p", "18830"], name="broker") as broker:
        broker.wait_for_output(r"running", timeout=5)
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Closeable(Protocol):
    def close(self) -> None: ...


#: everything started and not yet stopped (children, brokers, containers); ``atexit``
#: closes what a crashed caller forgot
_LIVE: set[Closeable] = set()


def track(thing: Closeable) -> None:
    """Have ``thing.close()`` called at interpreter exit unless :func:`untrack` comes first."""
    _LIVE.add(thing)


def untrack(thing: Closeable) -> None:
    _LIVE.discard(thing)


def tracked_pids() -> set[int]:
    """The process ids of every running child this process is tracking (brokers included)."""
    # a copy (one step under the GIL): brokers and programs of runs started ahead are tracked
    # from other threads, and a set that grows while it is iterated raises
    pids = {getattr(thing, "pid", None) for thing in _LIVE.copy()}
    return {pid for pid in pids if isinstance(pid, int)}


#: the first pause of :func:`wait_until`; each next one doubles, up to its ``interval``
FIRST_PAUSE = 0.001


class ProcessTimeout(TimeoutError):
    """A condition did not come true before its deadline."""


def wait_until(
    condition: Callable[[], T | None],
    timeout: float,
    *,
    interval: float = 0.02,
    stop_early: Callable[[], bool] | None = None,
) -> T:
    """Poll ``condition`` until it returns something other than ``None``/``False``.

    :param interval: the longest pause between two checks; the first ones come sooner
        (:data:`FIRST_PAUSE`, doubling), so that a condition that comes true at once is seen
        at once, and one that takes long is not checked more often than every ``interval``.
    :param stop_early: checked after each miss; when it returns True the wait ends
        at once with :class:`ProcessTimeout` (a program that exited will never print
        the line we are waiting for).
    :raises ProcessTimeout: when the deadline passes, or ``stop_early`` says so.
    """
    deadline = time.monotonic() + timeout
    pause = min(FIRST_PAUSE, interval)
    while True:
        result = condition()
        if result is not None and result is not False:
            return result
        if stop_early is not None and stop_early():
            raise ProcessTimeout("stopped waiting: the awaited event can no longer happen")
        now = time.monotonic()
        if now >= deadline:
            raise ProcessTimeout(f"not within {timeout}s")
        time.sleep(min(pause, deadline - now))
        pause = min(2 * pause, interval)


def wait_reaped(process: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``process`` to exit, and reap it: True if it did.

    The wait ends the moment the process exits: a pidfd (Linux 5.3+) becomes readable then,
    where :meth:`subprocess.Popen.wait` would notice only at its next poll (it sleeps up to
    50 ms between them). Popen still reaps it, so its ``returncode`` is right. Without pidfds
    (another OS, an old kernel) it is Popen's own wait.
    """
    if process.poll() is not None:
        return True
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):  # no pidfd here, or the process is already gone
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)
        return process.poll() is not None
    try:
        # Not reaped after the pidfd was opened: the pidfd is this process's (a pid is
        # reused only once reaped), and it is readable once the process has exited.
        if process.poll() is None:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            poller.poll(max(0.0, timeout) * 1000)
    finally:
        os.close(pidfd)
    return process.poll() is not None


def die_with_parent() -> list[str]:
    """A command prefix that makes the child get SIGTERM if this process dies (Linux)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


class ChildProcess:
    """One program run by the lab.

    :param command: the argv to run.
    :param name: what to call it in messages.
    :param env: its environment (default: this process's).
    :param cwd: its working directory.
    :param output_path: the file it prints to (default: a temp file that
        :meth:`close` removes).
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        name: str = "program",
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
        output_path: Path | None = None,
    ) -> None:
        self.command = list(command)
        self.name = name
        self.env = dict(env if env is not None else os.environ)
        self.cwd = cwd
        self._owns_output = output_path is None
        self.output_path = output_path
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at: float | None = None
        #: extra keyword arguments for :class:`subprocess.Popen` (``preexec_fn``, ``user``,
        #: ``group``): the class grader's limits on a student's programs (see ``roles.py``)
        self.popen_options: dict[str, Any] = {}

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> ChildProcess:
        """Start the program. :raises OSError: when it cannot be run at all."""
        if self.output_path is None:
            fd, path = tempfile.mkstemp(prefix=f"mqtt-lab-{self.name}-", suffix=".log")
            os.close(fd)
            self.output_path = Path(path)
        with open(self.output_path, "wb") as out:
            self.process = subprocess.Popen(
                [*die_with_parent(), *self.command],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
                **self.popen_options,
            )
        self.started_at = time.monotonic()
        track(self)
        return self

    def signal(self, signum: int) -> None:
        """Send ``signum`` (SIGSTOP, SIGCONT, SIGTERM...) to the program's process group.

        The program leads a session (and process group) of its own, so a wrapper
        (``sh run.sh``, ``npm start``, ``poetry run ...``) and the program it starts get it alike.
        """
        if self.process is not None and self.process.poll() is None:
            self._signal_group(signum)

    def _signal_group(self, signum: int) -> bool:
        """``killpg`` the program's group; False when no process of it is left."""
        if self.process is None or self._pid_recycled():
            return False
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            return False
        except PermissionError:  # a member changed user: signal at least the leader we started
            if self.process.poll() is None:
                self.process.send_signal(signum)
        return True

    def _group_gone(self) -> bool:
        """True when no process of the program's group is left (zombies do not count)."""
        if self.process is None or self._pid_recycled():
            return True
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return not _live_group_members(self.process.pid)

    def _pid_recycled(self) -> bool:
        """The leader was reaped and its pid is another process's now: the kernel hands out a
        pid only when no group uses it any more, so the program's group is gone and group
        ``pid`` is someone else's (a fork-happy machine recycles pids within seconds)."""
        assert self.process is not None
        return self.process.returncode is not None and os.path.exists(f"/proc/{self.process.pid}")

    def stop(self, timeout: float = 5.0) -> int | None:
        """Ask the program's process group to end (SIGTERM; SIGCONT too, in case it is paused),
        wait up to ``timeout`` for all of it, then SIGKILL the group.

        A wrapper that does not forward signals (``sh run.sh`` starting the real program)
        leaves nothing behind: the real program is in the same group.

        :returns: the leader's exit status, or None if it never started.
        """
        process = self.process
        if process is None:
            return None
        if process.poll() is None or not self._group_gone():
            self._signal_group(signal.SIGTERM)
            self._signal_group(signal.SIGCONT)
            deadline = time.monotonic() + timeout
            wait_reaped(process, timeout)
            with contextlib.suppress(ProcessTimeout):  # the wrapper's children, after it
                wait_until(self._group_gone, max(0.0, deadline - time.monotonic()), interval=0.05)
            self._signal_group(signal.SIGKILL)
            wait_reaped(process, 5)
        untrack(self)
        return process.returncode

    def kill(self) -> None:
        """End the program's process group at once (SIGKILL): no goodbye, as in a crash."""
        if self.process is not None:
            self._signal_group(signal.SIGKILL)
            wait_reaped(self.process, 5)
        untrack(self)

    def close(self) -> None:
        """Stop the program and remove its output file if the lab made it."""
        self.stop()
        if self._owns_output and self.output_path is not None:
            self.output_path.unlink(missing_ok=True)

    def __enter__(self) -> ChildProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state -------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def returncode(self) -> int | None:
        return self.process.poll() if self.process else None

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def output(self) -> str:
        """Everything the program printed so far (stdout and stderr)."""
        if self.output_path is None:
            return ""
        try:
            return self.output_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- waiting -----------------------------------------------------------
    def wait_for_output(self, pattern: str, timeout: float = 10.0) -> str:
        """The first line of output matching ``pattern``, waiting up to ``timeout``.

        :raises ProcessTimeout: when the deadline passes or the program exits first
            (check :meth:`is_running` to tell which).
        """
        regex = re.compile(pattern)

        def matching_line() -> str | None:
            return next((line for line in self.output().splitlines() if regex.search(line)), None)

        try:
            return wait_until(matching_line, timeout, stop_early=lambda: not self.is_running())
        except ProcessTimeout:
            line = matching_line()  # it may have printed the line just before exiting
            if line is not None:
                return line
            raise

    def wait_exit(self, timeout: float = 10.0) -> int:
        """Wait for the program to end by itself. :raises ProcessTimeout: if it does not."""
        if self.process is None:
            raise ProcessTimeout(f"{self.name} was never started")
        if not wait_reaped(self.process, timeout):
            raise ProcessTimeout(f"{self.name} did not exit within {timeout}s")
        untrack(self)
        return self.process.returncode

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} pid={self.pid}>"


def _live_group_members(pgid: int) -> list[int]:
    """The processes of group ``pgid`` that are not zombies (``/proc``; an orphaned zombie
    waits for a reaper that a container's PID 1 may never be)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


@atexit.register
def close_forgotten() -> None:
    """Close everything still tracked (at exit; safe to call more than once)."""
    for thing in _LIVE.copy():
        untrack(thing)
        thing.close()
