"""Limits on a student's programs: CPU, memory, file size, processes, and who they run as.

The class grader (:mod:`mqtt_factory_lab.grading`) runs each lesson in a child pytest,
and that child starts the student's programs through :class:`~mqtt_factory_lab.core.roles.RoleProcess`.
The limits travel from the grader to that point as one environment variable,
:data:`ENV_LIMITS` (JSON), which ``RoleProcess`` reads: a lesson run by hand, without the
grader, starts programs exactly as before.

Applied in the program's process between ``fork`` and ``exec``:

* ``RLIMIT_CPU`` seconds of CPU (per role if asked: a controller may get more than a device);
  past it the kernel sends SIGXCPU, then SIGKILL;
* ``RLIMIT_AS`` bytes of address space (a program that allocates without end gets MemoryError);
* ``RLIMIT_FSIZE`` bytes per file written, its output file included (past it: SIGXFSZ);
* ``RLIMIT_NPROC`` processes and threads of its user (a fork bomb gets EAGAIN) — the kernel
  does not enforce it for root, so it is set only together with an unprivileged user;
* ``RLIMIT_CORE`` 0: no core dumps;
* when the grader runs as root, a user and group id without privileges (``user=``/``group=``
  of :class:`subprocess.Popen`; one uid per parallel slot, so that the process limit counts
  one submission's programs only).

The ``preexec_fn`` only calls :func:`resource.setrlimit` with values computed beforehand:
nothing in it takes a lock that another thread of the lab could hold at ``fork``.
"""

from __future__ import annotations

import json
import os
import resource
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

#: the environment variable that carries the limits from the grader to ``RoleProcess``
ENV_LIMITS = "MQTT_LAB_LIMITS"
#: what a limit is called in messages, by the signal a program gets when it hits it
LIMIT_SIGNALS = {
    24: "SIGXCPU: it used up its CPU time limit",
    25: "SIGXFSZ: it wrote more than the file size limit",
    9: "SIGKILL: it was killed (CPU limit passed, or it did not stop when asked)",
}


@dataclass(frozen=True)
class Limits:
    """What a student's program may use.

    :ivar cpu_seconds: CPU seconds per program (``None``: no limit).
    :ivar role_cpu_seconds: CPU seconds for some roles, overriding ``cpu_seconds``.
    :ivar memory_mb: address space per program, MiB.
    :ivar file_mb: largest file a program may write, MiB (its printed output included).
    :ivar processes: processes and threads of the program's user (only with ``uid``).
    :ivar uid: the user id to run as (only when the grader is root).
    :ivar gid: the group id to run as.
    """

    cpu_seconds: int | None = 60
    role_cpu_seconds: dict[str, int] = field(default_factory=dict)
    memory_mb: int | None = 1024
    file_mb: int | None = 20
    processes: int | None = 256
    uid: int | None = None
    gid: int | None = None

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Limits | None:
        """The limits the grader set for this run, or ``None`` outside the grader."""
        text = (os.environ if environ is None else environ).get(ENV_LIMITS)
        if not text:
            return None
        try:
            data = json.loads(text)
            return cls(**data)
        except (ValueError, TypeError) as error:
            raise ValueError(f"{ENV_LIMITS} is not valid: {error} ({text!r})") from error

    def rlimits(self, role: str) -> list[tuple[int, int]]:
        """``(resource, value)`` pairs for a program playing ``role``."""
        mib = 1024 * 1024
        cpu = self.role_cpu_seconds.get(role, self.cpu_seconds)
        pairs = [(resource.RLIMIT_CORE, 0)]
        if cpu is not None:
            pairs.append((resource.RLIMIT_CPU, int(cpu)))
        if self.memory_mb is not None:
            pairs.append((resource.RLIMIT_AS, int(self.memory_mb) * mib))
        if self.file_mb is not None:
            pairs.append((resource.RLIMIT_FSIZE, int(self.file_mb) * mib))
        if self.processes is not None and self.uid is not None:
            pairs.append((resource.RLIMIT_NPROC, int(self.processes)))
        return pairs

    def popen_options(self, role: str) -> dict[str, Any]:
        """Keyword arguments for :class:`subprocess.Popen` that apply these limits."""
        options: dict[str, Any] = {"preexec_fn": _set_limits(self.rlimits(role))}
        if self.uid is not None and os.geteuid() == 0:
            options["user"] = self.uid
            options["group"] = self.gid if self.gid is not None else self.uid
            options["extra_groups"] = []
        return options


def _set_limits(pairs: list[tuple[int, int]]) -> Callable[[], None]:
    setrlimit = resource.setrlimit

    def apply() -> None:  # runs in the child between fork and exec: keep it minimal
        for which, value in pairs:
            setrlimit(which, (value, value))

    return apply


def popen_options_for(role: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What ``RoleProcess`` passes to Popen: the grader's limits, or nothing outside it."""
    limits = Limits.from_env(environ)
    return {} if limits is None else limits.popen_options(role)


def describe_exit(returncode: int | None) -> str:
    """``-24`` → ``"SIGXCPU: it used up its CPU time limit"``; ``""`` for other statuses."""
    if returncode is None or returncode >= 0:
        return ""
    return LIMIT_SIGNALS.get(-returncode, "")
