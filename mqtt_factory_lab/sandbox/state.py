"""The sandbox's state folder: one record per program ``up`` started.

::

    <state dir>/sandbox.json        what ``up`` was asked for and where things listen
    <state dir>/run/<name>.json     one record per program: pid, start time, command, log
    <state dir>/logs/<name>.log     what the program printed (stdout and stderr)
    <state dir>/broker/             the broker's configuration and persistence
    <state dir>/datacenter.db       the data center's SQLite store

A record names a process by its pid *and* its start time (``psutil``'s ``create_time``):
after a reboot, or long after a crash, the pid may belong to someone else, and then the
record is stale, never a reason to signal that process.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

DEFAULT_STATE_DIR = Path("~/.local/state/mqtt-factory-lab/sandbox")
STATE_DIR_ENV = "MQTT_LAB_SANDBOX_STATE"
#: every program the sandbox starts carries this variable (the state folder's path), so
#: ``down`` finds their descendants even when a record is missing
TAG_ENV = "MQTT_LAB_SANDBOX"
#: start times agree within this many seconds (psutil rounds to clock ticks)
_START_TIME_SLACK = 0.05


def default_state_dir() -> Path:
    base = os.environ.get(STATE_DIR_ENV)
    if base:
        return Path(base).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    if xdg:
        return Path(xdg) / "mqtt-factory-lab" / "sandbox"
    return DEFAULT_STATE_DIR.expanduser()


@dataclass
class Record:
    """One program the sandbox started.

    :param name: its name in the sandbox (``broker``, ``factory``, ``dashboard``...).
    :param pid: its process id (0 for a broker in a container).
    :param create_time: the process's start time, as psutil reports it.
    :param argv: the command it runs (to restart it after a fault).
    :param log: the file it prints to.
    :param container: the container id, for a broker run by Docker.
    """

    name: str
    pid: int
    create_time: float
    argv: list[str] = field(default_factory=list)
    log: str = ""
    container: str = ""

    def process(self) -> psutil.Process | None:
        """The running process this record names, or None (exited, or the pid was reused)."""
        if not self.pid:
            return None
        try:
            process = psutil.Process(self.pid)
            if abs(process.create_time() - self.create_time) > _START_TIME_SLACK:
                return None
            if process.status() == psutil.STATUS_ZOMBIE:
                return None
            return process
        except psutil.Error:
            return None


#: the order ``up`` starts programs in (a program restarted by a fault keeps its place)
START_ORDER = ("broker", "factory", "datacenter", "chocolate", "dashboard")


def _rank(name: str) -> int:
    return START_ORDER.index(name) if name in START_ORDER else len(START_ORDER)


class StateDir:
    """The folder where ``up`` writes down what it started and ``down`` reads it back."""

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path).expanduser().resolve() if path else default_state_dir().resolve()

    @property
    def run_dir(self) -> Path:
        return self.path / "run"

    @property
    def log_dir(self) -> Path:
        return self.path / "logs"

    @property
    def broker_dir(self) -> Path:
        return self.path / "broker"

    @property
    def database(self) -> Path:
        return self.path / "datacenter.db"

    @property
    def settings_file(self) -> Path:
        return self.path / "sandbox.json"

    def log_file(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def prepare(self) -> None:
        for folder in (self.path, self.run_dir, self.log_dir, self.broker_dir):
            folder.mkdir(parents=True, exist_ok=True)

    # -- records ---------------------------------------------------------------------
    def write(self, record: Record) -> None:
        """Write ``record`` atomically: ``down`` may read it at any moment."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        target = self.run_dir / f"{record.name}.json"
        temporary = target.with_suffix(".tmp")
        temporary.write_text(json.dumps(asdict(record), indent=1))
        temporary.replace(target)

    def records(self) -> list[Record]:
        """Every record, in the order the programs were started."""
        found = []
        for path in self.run_dir.glob("*.json"):
            try:
                found.append(Record(**json.loads(path.read_text())))
            except (OSError, ValueError, TypeError):
                continue  # half-written by a crash: the tag sweep in ``down`` covers it
        return sorted(found, key=lambda r: (_rank(r.name), r.create_time))

    def record(self, name: str) -> Record | None:
        return next((r for r in self.records() if r.name == name), None)

    def forget(self, name: str) -> None:
        (self.run_dir / f"{name}.json").unlink(missing_ok=True)

    # -- settings --------------------------------------------------------------------
    def write_settings(self, settings: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.settings_file.write_text(json.dumps(settings, indent=1))

    def settings(self) -> dict[str, Any]:
        try:
            return json.loads(self.settings_file.read_text())
        except (OSError, ValueError):
            return {}

    def clear_settings(self) -> None:
        self.settings_file.unlink(missing_ok=True)
