"""What keeps a submission's programs in their box: the user they run as, a Python they can
read, a network of their own, and the sweep that ends whatever they leave running.

* **A Python the student's user can run.** Student programs run as an unprivileged user (as
  root: one uid per parallel slot), but the lab's interpreter often lives where only root
  can read it (a pyenv or a checkout under ``/root``, mode 0700). :class:`ReadableRuntime`
  then builds, for the length of the grading, a world-readable copy of what the programs
  need — the interpreter without its own site-packages (or, when every user can already
  run it, as Debian's ``/usr/bin/python3``, a virtual environment of it), the lab's venv
  packages and the lab's public files (``sim/``, the package, ``docker/``, ``schemas/``; never the hidden
  experiments) — out of hard links where it can (seconds, no disk), with the bytecode of
  the lab's packages written once, and the child pytests run with it: ``{python}`` in a
  manifest is that copy.
* **A network of its own.** :func:`network_prefix` runs a lesson run in a new network
  namespace with only its own loopback up: its brokers listen there and its programs see
  nothing else, not another submission's broker on 127.0.0.1 nor the machine's services.
  It needs ``CAP_SYS_ADMIN`` (root); :func:`network_problem` says why it is not possible.
* **Nothing left behind.** :func:`end` stops a child pytest (SIGTERM, grace, SIGKILL to its
  group) and :func:`sweep` kills every process that carries the run's token or runs as the
  slot's user, even those that left their process group.
"""

from __future__ import annotations

import compileall
import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

try:  # finds the programs that left their process group (sweep)
    import psutil
except ImportError:  # pragma: no cover - depends on the installation
    psutil = None  # type: ignore[assignment]

from mqtt_factory_lab.core.paths import LAB_ROOT

#: every process a unit starts inherits this variable; its value names the unit
ENV_TOKEN = "MQTT_LAB_GRADE_TOKEN"
#: seconds a child pytest has after SIGTERM to stop its programs and brokers
GRACE_SECONDS = 10.0
#: what a student program must be able to import, as its own user, from ``/``
_IMPORTS = (
    "import paho.mqtt.client, sim, mqtt_factory_lab.core.paths as p; "
    "assert (p.LAB_ROOT / 'docker' / 'mosquitto.conf').is_file(), p.LAB_ROOT"
)
#: names of the lab's folder that are not part of what a student program may read
_PRIVATE_NAMES = {".git", ".venv", "venv", "node_modules", "__pycache__", ".ruff_cache"}

# Run as ``python -I -c NETNS COMMAND...``: a new network namespace (unshare(2),
# CLONE_NEWNET) whose loopback is brought up (SIOCSIFFLAGS IFF_UP), then exec COMMAND.
NETNS = r"""
import ctypes, fcntl, os, socket, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x40000000) != 0:
    sys.exit("unshare(CLONE_NEWNET): " + os.strerror(ctypes.get_errno()))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flags = struct.unpack("16sh22x", fcntl.ioctl(s, 0x8913, struct.pack("16sh22x", b"lo", 0)))[1]
fcntl.ioctl(s, 0x8914, struct.pack("16sh22x", b"lo", flags | 1))
s.close()
os.execvp(sys.argv[1], sys.argv[1:])
"""


def network_prefix(python: str) -> list[str]:
    """A command prefix that runs the command in a network namespace of its own."""
    return [python, "-I", "-c", NETNS]


def network_problem(python: str) -> str:
    """Why a lesson run cannot get a network namespace of its own here ("" if it can)."""
    probe = "import socket; s = socket.create_server(('127.0.0.1', 0)); s.close()"
    try:
        done = subprocess.run(
            [*network_prefix(python), python, "-I", "-c", probe],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    except OSError as error:
        return str(error)
    if done.returncode == 0:
        return ""
    return (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]


def unprivileged_python_problem(
    uid: int, python: str = sys.executable, env: dict[str, str] | None = None
) -> str:
    """Why user ``uid`` cannot run ``python`` with the lab's packages and files ("" if it can)."""
    try:
        done = subprocess.run(
            [python, "-I", "-c", _IMPORTS],
            user=uid, group=uid, extra_groups=[], cwd="/", env=env,
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    except OSError as error:
        return f"{python}: {error}"
    return "" if done.returncode == 0 else (done.stderr.strip().splitlines() or ["?"])[-1]


@dataclass
class ReadableRuntime:
    """A world-readable Python with the lab's packages and public files, under ``root``.

    :ivar python: its interpreter (``{python}`` of the student programs).
    :ivar lab_root: its copy of the lab's folder (``LAB_ROOT`` inside it).
    :ivar env: what its programs need in the environment (``LD_LIBRARY_PATH``: the
        interpreter's ``RUNPATH`` names the original, unreadable place).
    """

    root: Path
    python: str = ""
    lab_root: Path = LAB_ROOT
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, root: Path, leave_out: tuple[Path, ...] = ()) -> ReadableRuntime:
        """Copy (hard links where possible) the interpreter, the venv's packages and the lab.

        :param leave_out: folders never copied (the hidden experiments' folder).
        """
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        base = Path(sys.base_prefix)
        prefix = root / "python"
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o755)
        interpreter = Path(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))
        if _everyone_can_read(interpreter) and _everyone_can_read(base / "lib" / version / "os.py"):
            # a distribution's interpreter (/usr/bin/python3): every user can already run it
            # and read its standard library, so the copy is a virtual environment of it, not
            # a copy of /usr
            _venv_of(interpreter, prefix, version)
            env = {}
        else:
            _link_tree(base, prefix, skip={base / "lib" / version / "site-packages",
                                           base / "lib" / version / "test"})  # fmt: skip
            env = {"LD_LIBRARY_PATH": str(prefix / "lib")}
        site_dir = prefix / "lib" / version / "site-packages"
        site_dir.mkdir(parents=True, exist_ok=True)
        for packages in _site_packages():
            _link_tree(packages, site_dir, skip_name=lambda n: n.startswith("__editable__"))
        lab = prefix / "share" / "mqtt-factory-lab"
        leave = {p.resolve() for p in leave_out}
        _link_tree(LAB_ROOT, lab, skip=leave, skip_name=lambda n: n in _PRIVATE_NAMES)
        _compile(lab)
        (site_dir / "mqtt-factory-lab.pth").write_text(f"{lab}\n")
        (site_dir / "mqtt-factory-lab.pth").chmod(0o644)
        executable = Path(os.path.realpath(sys.executable)).name
        return cls(
            root=root,
            python=str(prefix / "bin" / executable),
            lab_root=lab,
            env=env,
        )


def _everyone_can_read(path: Path) -> bool:
    """Whether any user reaches and reads ``path``: o+x on every folder above it, o+r on it."""
    try:
        return all(folder.stat().st_mode & 0o001 for folder in path.parents) and bool(
            path.stat().st_mode & 0o004
        )
    except OSError:
        return False


def _venv_of(interpreter: Path, prefix: Path, version: str) -> None:
    """A virtual environment at ``prefix`` of ``interpreter`` (what ``python -m venv`` makes,
    without pip): its ``bin/`` links to the interpreter, its ``pyvenv.cfg`` names it."""
    (prefix / "bin").mkdir(parents=True, exist_ok=True)
    (prefix / "lib" / version / "site-packages").mkdir(parents=True, exist_ok=True)
    for folder in (prefix, prefix / "bin", prefix / "lib", prefix / "lib" / version):
        folder.chmod(0o755)
    link = prefix / "bin" / interpreter.name
    if not link.is_symlink():
        link.symlink_to(interpreter)
    config = prefix / "pyvenv.cfg"
    config.write_text(
        f"home = {interpreter.parent}\ninclude-system-site-packages = false\n"
        f"version = {'.'.join(map(str, sys.version_info[:3]))}\n"
    )
    config.chmod(0o644)


#: the copy's packages whose bytecode is written once per class (see :func:`_compile`)
_COMPILED = ("sim", "mqtt_factory_lab")


def _compile(lab: Path) -> None:
    """Write the bytecode of the copy's packages, once for the whole class.

    Every student program and child pytest imports ``sim`` and the harness; the copy
    leaves out ``__pycache__`` and they run with ``PYTHONDONTWRITEBYTECODE``, so without
    this each of the ~100 program starts of a submission compiled them again (~0.04 CPU-s a
    start). The bytecode is root's, like its source: no student program can change it.
    """
    for name in _COMPILED:
        if (lab / name).is_dir():
            compileall.compile_dir(lab / name, quiet=1)


def _site_packages() -> list[Path]:
    import site

    found = [Path(p) for p in site.getsitepackages() if Path(p).is_dir()]
    return [
        p for p in found if not p.is_relative_to(sys.base_prefix) or sys.prefix == sys.base_prefix
    ]


def _link_tree(source: Path, target: Path, skip: set[Path] | None = None, skip_name=None) -> None:  # type: ignore[no-untyped-def]
    """``target`` as a copy of ``source`` made of hard links (copies across file systems);
    folders keep their mode (a private folder stays private), the top one is 0755."""
    skip = skip or set()
    target.mkdir(parents=True, exist_ok=True)
    target.chmod(0o755)
    for folder, dirs, files in os.walk(source):
        here = Path(folder)
        into = target / here.relative_to(source)
        keep = []
        for name in dirs:
            path = here / name
            if path in skip or (skip_name and skip_name(name)):
                continue
            if path.is_symlink():
                files.append(name)
                continue
            keep.append(name)
            (into / name).mkdir(exist_ok=True)
            (into / name).chmod(path.stat().st_mode & 0o777)
        dirs[:] = keep
        for name in files:
            path = here / name
            if path in skip or (skip_name and skip_name(name)):
                continue
            destination = into / name
            if destination.exists() or destination.is_symlink():
                continue
            link = os.readlink(path) if path.is_symlink() else None
            if link is not None and not os.path.isabs(link):
                os.symlink(link, destination)
                continue
            real = Path(os.path.realpath(path))
            if not real.exists() or real.is_dir():
                continue
            try:
                os.link(real, destination)
            except OSError:
                shutil.copy2(real, destination)


#: where graders on one machine claim their slots' user ids (one lock file per uid): one
#: place for the whole machine, whatever ``TMPDIR`` each grader runs with
UID_LOCKS = Path("/tmp/mqtt-lab-uids")


def claim_uids(first: int, count: int, tries: int = 200) -> tuple[int, list[IO[bytes]]]:
    """``count`` consecutive user ids from ``first`` on that no other grader holds and no
    process runs as: the sweep kills every process of a slot's user, so two graders (two
    shards, two instructors, two test workers) on one machine must never share one.

    :returns: the first uid and the locks (``flock``) that hold them: keep them open.
    :raises RuntimeError: when ``tries`` ranges are all taken.
    """
    UID_LOCKS.mkdir(mode=0o700, exist_ok=True)
    busy = {p.info["uids"].real for p in psutil.process_iter(["uids"]) if p.info["uids"]}
    for base in range(first, first + tries * count, count):
        wanted = range(base, base + count)
        if busy.intersection(wanted):
            continue
        held: list[IO[bytes]] = []
        for uid in wanted:
            lock = open(UID_LOCKS / f"{uid}.lock", "ab")  # noqa: SIM115 - held for the grading
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                lock.close()
                break
            held.append(lock)
        if len(held) == count:
            return base, held
        for lock in held:
            lock.close()
    raise RuntimeError(f"no {count} free user ids from {first} on: every range is in use")


def end(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the lab's plugin then tears down like Ctrl-C), a grace period, then SIGKILL.

    The child pytest leads its own process group: SIGKILL goes to the whole group.
    """
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(GRACE_SECONDS)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5)


def sweep(token: str, uid: int | None = None, keep: Collection[int] = ()) -> int:
    """Kill every process whose environment carries ``token`` (but those in ``keep``) or that
    runs as ``uid``.

    A program that forked children into new sessions escapes its process group and its
    parent-death signal; its environment still names the unit that started it. One that
    also cleared its environment still runs as the slot's own user (when the grader drops
    privileges). :returns: how many processes there were.
    """
    found: list[psutil.Process] = []
    me = os.getpid()
    for process in psutil.process_iter():
        if process.pid == me:
            continue
        with contextlib.suppress(psutil.Error):
            if process.status() == psutil.STATUS_ZOMBIE:
                continue  # it has ended; its parent (or init) has yet to reap it
            if (uid is not None and process.uids().real == uid) or (
                token and process.pid not in keep and process.environ().get(ENV_TOKEN) == token
            ):
                found.append(process)
    for process in found:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(found, timeout=5)
    return len(found)
