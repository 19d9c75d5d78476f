"""Programs of the sandbox: started detached, awaited by their ready line, always ended.

A program the sandbox starts outlives the ``mqtt-lab sandbox up`` that started it, so it
gets none of the harness's tie to its parent (no parent-death signal): it runs in a
session and process group of its own (Ctrl-C in the terminal does not reach it), prints
into its log file, and carries :data:`~.state.TAG_ENV` in its environment. Ending it means
SIGTERM to its process group and to every descendant, a grace period, then SIGKILL to
whatever of them is still there.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import psutil

from mqtt_factory_lab.core.paths import LAB_ROOT
from mqtt_factory_lab.core.process import ProcessTimeout, wait_until
from mqtt_factory_lab.sandbox.state import TAG_ENV, Record, StateDir


class StartError(RuntimeError):
    """A program of the sandbox could not start; the message names it and quotes its log."""


def python_module(module: str, *args: str) -> list[str]:
    """The argv running ``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def program_env(state: StateDir, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every program: ours, unbuffered, ``sim`` importable, tagged."""
    env = dict(os.environ)
    paths = [str(LAB_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    env[TAG_ENV] = str(state.path)
    env.update(extra or {})
    return env


def spawn(state: StateDir, name: str, argv: Sequence[str], env: Mapping[str, str]) -> Record:
    """Start ``argv`` detached as ``name``; its record is written before this returns.

    The log is appended to, so a restarted program (after a fault) keeps its history.
    """
    log = state.log_file(name)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=LAB_ROOT,
            start_new_session=True,
        )
    try:
        create_time = psutil.Process(process.pid).create_time()
    except psutil.Error:
        create_time = 0.0
    record = Record(name, process.pid, create_time, list(argv), str(log))
    state.write(record)
    # The sandbox does not wait for its programs: the reaper below keeps them from
    # lingering as zombies while this process (``--foreground``, a fault) still runs.
    _CHILDREN.append(process)
    return record


_CHILDREN: list[subprocess.Popen[bytes]] = []


def reap() -> None:
    """Collect the exit status of children that ended (no zombies in ``status``)."""
    for child in list(_CHILDREN):
        if child.poll() is not None:
            _CHILDREN.remove(child)


def log_tail(path: Path | str, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "    (no log)"
    return "\n".join(f"    {line}" for line in text[-lines:]) or "    (nothing printed)"


def alive(record: Record) -> bool:
    reap()
    return record.process() is not None


def wait_for_line(record: Record, pattern: str, timeout: float, *, since: int = 0) -> re.Match[str]:
    """The first line of ``record``'s log after byte ``since`` that matches ``pattern``.

    :raises StartError: when the program exits first or the deadline passes, quoting its log.
    """
    regex = re.compile(pattern, re.MULTILINE)

    def found() -> re.Match[str] | None:
        try:
            with open(record.log, "rb") as log:
                log.seek(since)
                return regex.search(log.read().decode(errors="replace"))
        except OSError:
            return None

    try:
        return wait_until(found, timeout, interval=0.02, stop_early=lambda: not alive(record))
    except ProcessTimeout:
        match = found()  # it may have printed the line and exited in the same instant
        if match:
            return match
        what = (
            "exited"
            if not alive(record)
            else f"printed no line matching {pattern!r} in {timeout:g} s"
        )
        raise StartError(
            f"{record.name} (pid {record.pid}) {what}.\n  command: {' '.join(record.argv)}\n"
            f"  its log ({record.log}):\n{log_tail(record.log)}"
        ) from None


def log_size(record: Record) -> int:
    try:
        return os.path.getsize(record.log)
    except OSError:
        return 0


def family(process: psutil.Process) -> list[psutil.Process]:
    """``process`` and all its descendants, parents first."""
    try:
        return [process, *(p for p in process.children(recursive=True) if not ended(p))]
    except psutil.Error:
        return [process]


def tagged(state: StateDir) -> list[psutil.Process]:
    """Every process carrying this sandbox's tag in its environment (not this one)."""
    found = []
    me = os.getpid()
    for process in psutil.process_iter():
        if process.pid == me:
            continue
        try:
            if process.environ().get(TAG_ENV) == str(state.path) and not ended(process):
                found.append(process)
        except psutil.Error:
            continue
    return found


def terminate(
    processes: Iterable[psutil.Process],
    timeout: float = 5.0,
    on_kill: Callable[[psutil.Process], None] | None = None,
) -> list[psutil.Process]:
    """SIGTERM each (and its process group, if it leads one), wait, SIGKILL the rest.

    :returns: the processes that had to be killed.
    """
    targets = list(dict.fromkeys(processes))
    for process in targets:
        try:
            if os.getpgid(process.pid) == process.pid:
                os.killpg(process.pid, signal.SIGTERM)
            else:
                process.terminate()
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    remaining = _wait_gone(targets, timeout)
    for process in remaining:
        if on_kill:
            on_kill(process)
        try:
            process.kill()
        except psutil.Error:
            continue
    _wait_gone(remaining, 2.0)
    return remaining


def ended(process: psutil.Process) -> bool:
    """Gone, or a zombie: it has exited, and whoever adopted it has yet to reap it (an init
    that reaps slowly would otherwise make every stop wait its whole grace period)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def _wait_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every one has ended; return those still running at the deadline."""
    reap()
    with contextlib.suppress(ProcessTimeout):
        wait_until(lambda: all(ended(p) for p in processes) or None, timeout, interval=0.02)
    reap()
    return [p for p in processes if not ended(p)]
