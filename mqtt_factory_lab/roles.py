"""Factory programs (a solution's roles) as child processes that always stop.

A :class:`RoleProcess` runs one command of a solution manifest (a device, the
controller, the observer...), keeps everything it prints in a file, can wait
for a line of its output, and stops it (SIGTERM, then SIGKILL) in
:meth:`RoleProcess.stop`. Like the local broker it runs in a session of its
own, so a Ctrl-C reaches pytest, which then stops every role in order; an
``atexit`` hook catches any role a crashed caller forgot.
"""

from __future__ import annotations

import atexit
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from mqtt_factory_lab.brokers.local import die_with_parent

_LIVE: set[RoleProcess] = set()


class RoleError(RuntimeError):
    """A role's program is missing, exited, or never became ready. Quotes its output."""


class RoleProcess:
    """One running program of a solution.

    :param role: the manifest's role name (``device``, ``controller``...), for messages.
    :param name: this instance's name (``press-01``), for messages.
    :param command: the argv to run.
    :param env: its environment (broker settings arrive as ``VF_*`` variables).
    :param cwd: its working directory (the solution's folder).
    """

    def __init__(
        self,
        role: str,
        name: str,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.role, self.name = role, name
        self.command = list(command)
        self.env = dict(env if env is not None else os.environ)
        self.cwd = cwd
        self.output_path: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at: float | None = None

    def start(self) -> RoleProcess:
        """Start the program. :raises RoleError: when it cannot be run at all."""
        if not self.command or not self._executable_exists(self.command[0]):
            raise RoleError(
                f"the {self.role} role ({self.name}) could not be started: "
                f"{self.command[0] if self.command else 'an empty command'!r} is not an executable "
                f"program (looked on PATH and relative to {self.cwd or os.getcwd()}).\n"
                f"  command: {shlex.join(self.command)}\n"
                f"  what to do: check the command in the solution manifest (is the program "
                f"installed, is the path right?)"
            )
        fd, path = tempfile.mkstemp(prefix=f"mqtt-lab-{self.role}-", suffix=".log")
        os.close(fd)
        self.output_path = Path(path)
        try:
            with open(self.output_path, "wb") as out:
                self.process = subprocess.Popen(
                    [*die_with_parent(), *self.command],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    cwd=self.cwd,
                    start_new_session=True,
                )
        except OSError as error:
            raise RoleError(
                f"the {self.role} role ({self.name}) could not be started: {error}.\n"
                f"  command: {shlex.join(self.command)}\n"
                f"  what to do: check the command in the solution manifest (is the program "
                f"installed, is the path right?)"
            ) from error
        self.started_at = time.monotonic()
        _LIVE.add(self)
        return self

    def _executable_exists(self, program: str) -> bool:
        if os.sep in program:
            candidate = Path(self.cwd or Path.cwd()) / program
            return candidate.is_file() and os.access(candidate, os.X_OK)
        return shutil.which(program, path=self.env.get("PATH")) is not None

    # -- state -----------------------------------------------------------
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

    def describe_failure(self, what: str, advice: str = "") -> str:
        lines = self.output().splitlines()[-30:]
        shown = "\n".join("    " + line for line in lines) or "    (it printed nothing)"
        status = (
            f"it exited with status {self.returncode}"
            if self.returncode is not None
            else "it is still running"
        )
        return (
            f"the {self.role} role ({self.name}) {what}; {status}.\n"
            f"  command: {shlex.join(self.command)}\n"
            f"  its output (last {len(lines)} lines):\n{shown}"
            + (f"\n  what to do: {advice}" if advice else "")
        )

    # -- waiting -----------------------------------------------------------
    def wait_for_output(self, pattern: str, timeout: float = 10.0, advice: str = "") -> str:
        """Wait for a line of output matching ``pattern``; fail early if the program exits.

        :param advice: what to tell the user when the line never comes.
        :raises RoleError: when the program exits or the deadline passes first.
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for line in self.output().splitlines():
                if regex.search(line):
                    return line
            if not self.is_running():
                raise RoleError(self.describe_failure(f"exited before printing {pattern!r}"))
            if time.monotonic() >= deadline:
                raise RoleError(
                    self.describe_failure(
                        f"did not print a line matching {pattern!r} within {timeout}s", advice
                    )
                )
            time.sleep(0.02)

    def wait_exit(self, timeout: float = 10.0) -> int:
        """Wait for the program to end by itself; return its exit status."""
        if self.process is None:
            raise RoleError(f"the {self.role} role ({self.name}) was never started")
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired as error:
            raise RoleError(self.describe_failure(f"did not exit within {timeout}s")) from error

    # -- stopping ------------------------------------------------------------
    def signal(self, signum: int) -> None:
        if self.is_running():
            assert self.process is not None
            self.process.send_signal(signum)

    def stop(self, timeout: float = 5.0) -> int | None:
        """Ask the program to stop (SIGTERM), then kill it; return its exit status."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        _LIVE.discard(self)
        return process.returncode

    def kill(self) -> None:
        """End the program at once (SIGKILL): no goodbye, as in a crash."""
        if self.is_running():
            assert self.process is not None
            self.process.kill()
            self.process.wait(5)

    def close(self) -> None:
        """Stop the program and remove its output file."""
        self.stop()
        if self.output_path is not None:
            self.output_path.unlink(missing_ok=True)

    def __enter__(self) -> RoleProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RoleProcess {self.role} {self.name} pid={self.pid}>"


@atexit.register
def _stop_forgotten_roles() -> None:
    for role in list(_LIVE):
        role.close()
