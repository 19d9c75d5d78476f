"""A solution's roles (device, controller, observer...) as child processes that always stop.

A :class:`RoleProcess` is a :class:`~mqtt_factory_lab.core.process.ChildProcess` that
knows which role of the manifest it plays, so that every failure names the role,
its command and what it printed, and says what to do.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from mqtt_factory_lab.core.limits import describe_exit, popen_options_for
from mqtt_factory_lab.core.process import ChildProcess, ProcessTimeout


class RoleError(RuntimeError):
    """A role's program is missing, exited, or never became ready. Quotes its output."""


class RoleProcess(ChildProcess):
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
        super().__init__(command, name=name, env=env, cwd=cwd)
        self.role = role
        # Under the class grader: CPU, memory, file and process limits, and an unprivileged
        # user when it runs as root (mqtt_factory_lab/core/limits.py). Nothing otherwise.
        self.popen_options = popen_options_for(role)

    def start(self) -> RoleProcess:
        """Start the program. :raises RoleError: when it cannot be run at all."""
        advice = "check the command in the solution manifest (is the program installed, is the path right?)"
        if not self.command or not self._executable_exists(self.command[0]):
            raise RoleError(
                f"the {self.role} role ({self.name}) could not be started: "
                f"{self.command[0] if self.command else 'an empty command'!r} is not an executable "
                f"program (looked on PATH and relative to {self.cwd or os.getcwd()}).\n"
                f"  command: {shlex.join(self.command)}\n"
                f"  what to do: {advice}"
            )
        try:
            super().start()
        except OSError as error:
            message = (
                f"the {self.role} role ({self.name}) could not be started: {error}.\n"
                f"  command: {shlex.join(self.command)}\n  what to do: {advice}"
            )
        else:
            return self
        raise RoleError(message)

    def _executable_exists(self, program: str) -> bool:
        if os.sep in program:
            candidate = Path(self.cwd or Path.cwd()) / program
            return candidate.is_file() and os.access(candidate, os.X_OK)
        return shutil.which(program, path=self.env.get("PATH")) is not None

    def describe_failure(self, what: str, advice: str = "", *, lines: int = 15) -> str:
        """What went wrong, the command, the last ``lines`` of its output, and what to do."""
        output = self.output().splitlines()
        shown = output[-lines:]
        quoted = "\n".join("    " + line for line in shown) or "    (it printed nothing)"
        heading = (
            f"its output (last {len(shown)} of {len(output)} lines)"
            if len(output) > len(shown)
            else "its output"
        )
        status = (
            f"it exited with status {self.returncode}"
            if self.returncode is not None
            else "it is still running"
        )
        if self.popen_options and describe_exit(self.returncode):
            status += f" ({describe_exit(self.returncode)})"
        return (
            f"the {self.role} role ({self.name}) {what}; {status}.\n"
            f"  command: {shlex.join(self.command)}\n"
            f"  {heading}:\n{quoted}" + (f"\n  what to do: {advice}" if advice else "")
        )

    def wait_for_output(
        self, pattern: str, timeout: float = 10.0, advice: str = "", *, line: str | None = None
    ) -> str:
        """Wait for a line of output matching ``pattern``; fail early if the program exits.

        :param advice: what to tell the user when the line never comes.
        :param line: the exact line ``pattern`` stands for (such as ``ready press-01``): messages
            then quote it as text, and say so when it was printed glued to other output.
        :raises RoleError: when the program exits or the deadline passes first.
        """
        try:
            return super().wait_for_output(pattern, timeout)
        except ProcessTimeout:
            pass
        expected = repr(line) if line is not None else f"a line matching {pattern!r}"
        glued = self._glued(line) if line is not None else None
        if glued is not None:
            what = (
                f"printed {line!r}, but not alone on its line: {glued!r}. Two threads printing "
                "at once (or a print with end='') glue lines together, and the lab reads lines"
            )
            advice = (
                f"print {line!r} on a line of its own, with flush=True, from one thread (or "
                "under a lock shared by everything that prints)"
            )
            raise RoleError(self.describe_failure(what, advice))
        if not self.is_running():
            raise RoleError(self.describe_failure(f"exited before printing {expected}", advice))
        raise RoleError(
            self.describe_failure(f"did not print {expected} within {timeout}s", advice)
        )

    def _glued(self, line: str) -> str | None:
        """The first output line that holds ``line`` among other text, or None."""
        for printed in self.output().splitlines():
            if line in printed and printed.strip() != line:
                return printed if len(printed) <= 120 else printed[:117] + "..."
        return None

    def wait_exit(self, timeout: float = 10.0) -> int:
        """Wait for the program to end by itself; return its exit status."""
        try:
            return super().wait_exit(timeout)
        except ProcessTimeout:
            pass
        raise RoleError(self.describe_failure(f"did not exit within {timeout}s"))

    def __repr__(self) -> str:
        return f"<RoleProcess {self.role} {self.name} pid={self.pid}>"
