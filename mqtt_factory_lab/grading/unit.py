"""One unit of grading: one lesson file (or file of hidden experiments) run against one
submission, in a child pytest of its own.

The child gets its own brokers (its broker pool), session and process group, network
namespace (when the machine allows it, :mod:`~mqtt_factory_lab.grading.sandbox`), the
grader's own pytest configuration (``-c`` the grader's ini, ``--rootdir``/``--confcutdir``
the grader's private lab copy, ``-p no:cacheprovider``, ``python -I``, a working directory
outside the submission: nothing in a submission is read by the tests), time limits
(``--timeout`` per experiment, ``lesson_timeout`` for the unit) and a token in the
environment that every program it starts inherits, by which leftovers are found and killed.
What it did comes from its ``--points-jsonl`` stream, which survives a killed run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

from mqtt_factory_lab.core.limits import ENV_LIMITS
from mqtt_factory_lab.core.paths import LAB_ROOT
from mqtt_factory_lab.core.process import die_with_parent
from mqtt_factory_lab.grading.points import Experiment, read_jsonl
from mqtt_factory_lab.grading.sandbox import ENV_TOKEN, end, network_prefix, sweep
from mqtt_factory_lab.grading.settings import Settings


@dataclass
class UnitResult:
    """What one child pytest did for one submission and one lesson file."""

    file: str
    returncode: int | None
    seconds: float
    token: str = ""
    timed_out: bool = False
    cancelled: bool = False
    killed_leftovers: int = 0
    log_tail: str = ""
    experiments: list[Experiment] = field(default_factory=list)


class Cancelled(Exception):
    """Grading was interrupted (Ctrl-C)."""


class UnitRunner:
    """Runs child pytests and ends them and everything they started, on every path.

    :param python: the interpreter of the child pytests, and so ``{python}`` of the
        student programs (a :class:`~mqtt_factory_lab.grading.sandbox.ReadableRuntime`'s).
    :param lab_root: the lab's folder as that interpreter sees it (``pythonpath``).
    :param env: more environment for the child pytests (the runtime's ``LD_LIBRARY_PATH``).
    :param isolate_network: run each child in a network namespace of its own.
    """

    def __init__(
        self,
        settings: Settings,
        workdir: Path,
        *,
        python: str = sys.executable,
        lab_root: Path = LAB_ROOT,
        env: dict[str, str] | None = None,
        isolate_network: bool = False,
    ) -> None:
        self.settings = settings
        self.workdir = workdir
        self.python = python
        self.lab_root = lab_root
        self.extra_env = dict(env or {})
        self.isolate_network = isolate_network
        self.ini = workdir / "pytest.ini"
        #: the grader's own copy of the lessons and hidden experiments (``labs/``, ``extra/``):
        #: root's alone (0700), whatever user the student programs run as
        self.root = workdir / "lab"
        self.root.mkdir(mode=0o700, exist_ok=True)
        self.root.chmod(0o700)
        self.cancel = threading.Event()
        self._live: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._write_ini()

    def _write_ini(self) -> None:
        """The grader's own pytest configuration: the lab's, whatever a submission holds."""
        self.ini.write_text(
            "[pytest]\n"
            "python_files = [0-9][0-9]_*.py test_*.py *.py\n"
            f"pythonpath = {self.lab_root}\n"
            "addopts = -p mqtt_factory_lab.plugin --strict-markers\n"
            "timeout_method = signal\n"
            "junit_family = xunit2\n"
        )
        self.ini.chmod(0o600)

    def command(self, file: Path, manifest: Path, jsonl: Path, extra: bool) -> list[str]:
        command = [
            self.python,
            "-I",
            "-m",
            "pytest",
            "-c",
            str(self.ini),
            "--rootdir",
            str(self.root),
            "--confcutdir",
            str(self.root),
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            "-q",
            "--no-header",
            "--no-points-summary",
            f"--timeout={self.settings.test_timeout:g}",
            f"--broker-backend={self.settings.backend}",
            f"--solution={manifest}",
            f"--points-jsonl={jsonl}",
        ]
        if not extra and self.settings.marker:
            command += ["-m", self.settings.marker]
        return [*command, str(file)]

    def environment(self, token: str, limits_env: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PYTEST_", "MQTT_LAB_", "PYTHON", "VF_"))
        }
        env.update(self.extra_env)
        env.update({ENV_TOKEN: token, ENV_LIMITS: limits_env, "PYTHONDONTWRITEBYTECODE": "1"})
        return env

    def run(
        self, file: Path, manifest: Path, workdir: Path, slot: int, extra: bool = False
    ) -> UnitResult:
        """Run ``file`` against ``manifest``; return its results, having killed every leftover."""
        if self.cancel.is_set():
            raise Cancelled
        token = uuid.uuid4().hex
        jsonl = workdir / f"{file.stem}.jsonl"
        log = workdir / f"{file.stem}.log"
        jsonl.unlink(missing_ok=True)
        jsonl.touch(mode=0o600)  # the child appends; the student's user cannot read it
        cwd = workdir / "cwd"
        cwd.mkdir(mode=0o700, exist_ok=True)
        limits = self.settings.limits
        uid = self.settings.uid_for(slot)
        if uid is not None:
            limits = replace(limits, uid=uid, gid=uid)
        env = self.environment(token, limits.to_env())
        prefix = network_prefix(self.python) if self.isolate_network else []
        started = time.monotonic()
        timed_out = cancelled = False
        with open(log, "wb") as out:
            os.chmod(log, 0o600)
            process = subprocess.Popen(
                [*die_with_parent(), *prefix, *self.command(file, manifest, jsonl, extra)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
        with self._lock:
            self._live[token] = process
        try:
            deadline = started + self.settings.lesson_timeout
            while True:
                try:
                    process.wait(timeout=max(0.0, min(0.5, deadline - time.monotonic())))
                    break
                except subprocess.TimeoutExpired:
                    if self.cancel.is_set():
                        cancelled = True
                        break
                    if time.monotonic() >= deadline:
                        timed_out = True
                        break
        finally:
            end(process)
            killed = sweep(token, limits.uid)
            with self._lock:
                self._live.pop(token, None)
        return UnitResult(
            file=file.name,
            token=token,
            returncode=process.returncode,
            seconds=time.monotonic() - started,
            timed_out=timed_out,
            cancelled=cancelled,
            killed_leftovers=killed,
            log_tail=_tail(log, 40),
            experiments=read_jsonl(jsonl),
        )

    def stop_all(self) -> None:
        """Cancel: end every running child pytest and whatever it started."""
        self.cancel.set()
        with self._lock:
            live = list(self._live.items())
        for token, process in live:
            end(process)
            sweep(token)  # (the slots' users are swept by the units themselves)


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return ""
    return "\n".join(text[-lines:])
