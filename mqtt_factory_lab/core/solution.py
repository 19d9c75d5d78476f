"""Solution manifests: how the lab starts someone's factory programs.

Lessons never import a solution's code. They read its manifest
(``solution.toml``) and start each *role* — device, controller, observer... —
as a program, passing broker settings in the environment (``VF_BROKER_HOST``,
``VF_BROKER_PORT``, ``VF_TOPIC_ROOT``, ``VF_MQTT_PROTOCOL``). The lab's own
factory (``sim/`` plus ``docker/``) is the reference solution, described by
``solution.toml`` at the project root; an instructor grades a student by
passing ``--solution path/to/their/solution.toml``.

A manifest::

    [solution]
    name = "reference"

    [roles.device]
    command = ["{python}", "-m", "sim.device", "--device", "{kind}", "--device-id", "{device_id}"]
    ready = "ready {device_id}"                  # optional: a line it prints when ready
    [roles.device.options]                       # extra arguments a lesson may ask for
    anomaly = ["--anomaly"]
    crash_after = ["--crash-after", "{crash_after}"]

    [files]
    acl = "docker/acl"                           # inside the manifest's folder

Placeholders are written ``{name}``; :data:`PLACEHOLDERS` lists them.
"""

from __future__ import annotations

import shlex
import string
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mqtt_factory_lab.core.paths import REFERENCE_MANIFEST

#: Placeholders a command may use, and what they stand for.
PLACEHOLDERS = {
    "python": "the Python interpreter running the lab",
    "solution_dir": "the folder holding the manifest",
    "kind": "device kind, one of the contract's device_kind values (such as press)",
    "device_id": "the device's id, also used in its topics",
    "client_id": "the MQTT client id to connect with",
    "seed": "random seed, for repeatable behaviour",
    "time_scale": "plant seconds per wall-clock second",
    "rate": "telemetry rounds per wall-clock second",
    "session": "controller session: clean or persistent",
    "crash_after": "seconds after which to end abruptly (no DISCONNECT)",
    "duration": "seconds after which to stop gracefully",
    "rules": "controller rules, SOURCE/SENSOR=TARGET",
    "keepalive": "MQTT keepalive in seconds (1 = the shortest legal value); the broker sends "
    "the Last Will of a client silent for 1.5 times as long",
    "db": "the SQLite database file a data center writes (lesson 07)",
    "share": "the shared subscription group a data center joins, $share/<share>/... (lesson 09)",
    "batches": "how many batches the chocolate line makes before it exits",
    "run_id": "makes the chocolate line's batch ids, lot codes and msg_ids unique to a run",
    "lot": "the lot code a traceability query starts from",
    "output": "a file a program writes its answer to",
    "metrics_port": "the 127.0.0.1 port an exporter serves /metrics on (lesson 11)",
}


class ManifestError(ValueError):
    """A solution manifest that cannot be used; the message says where and why."""


@dataclass(frozen=True)
class Role:
    """How to start one kind of program."""

    name: str
    command: tuple[str, ...]
    ready: str | None = None
    options: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Solution:
    """A loaded manifest.

    :ivar path: the manifest file.
    :ivar name: the solution's name (for reports).
    :ivar roles: how to start each role.
    :ivar files: other files of the solution (``acl``...), as absolute paths.
    :ivar filters: the ``[filters]`` table: topic filters that answer the factory's
        questions, by question name (lesson 01), with ``{root}`` for the topic root.
    """

    path: Path
    name: str
    roles: dict[str, Role]
    files: dict[str, Path]
    filters: dict[str, str] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def is_reference(self) -> bool:
        return self.path.resolve() == REFERENCE_MANIFEST

    def role(self, name: str) -> Role:
        """The role ``name``. :raises ManifestError: naming the roles the manifest has."""
        if name not in self.roles:
            raise ManifestError(
                f"solution {self.name!r} ({self.path}) has no [roles.{name}]: this lesson needs "
                f"a {name} program. Roles it declares: {', '.join(sorted(self.roles)) or 'none'}."
            )
        return self.roles[name]

    def command(self, role: str, options: dict[str, Any] | None = None, **values: Any) -> list[str]:
        """The argv for ``role`` with placeholders filled in.

        :param options: extra arguments to append, by option name; a value of
            ``True`` appends the option's arguments as they are, another value
            fills its placeholder of the same name; ``None``/``False`` skips it.
        """
        spec = self.role(role)
        values = {"python": sys.executable, "solution_dir": str(self.root), **values}
        argv = [_fill(part, values, self, role) for part in spec.command]
        for option, value in (options or {}).items():
            if value is None or value is False:
                continue
            if option not in spec.options:
                raise ManifestError(
                    f"solution {self.name!r}: the {role} role has no option {option!r}, which this "
                    f"lesson needs; add it under [roles.{role}.options] in {self.path}. "
                    f"It declares: {', '.join(sorted(spec.options)) or 'none'}."
                )
            argv += [
                _fill(part, {**values, option: value}, self, role) for part in spec.options[option]
            ]
        return argv

    def ready_line(self, role: str, **values: Any) -> str | None:
        spec = self.role(role)
        return _fill(spec.ready, values, self, role) if spec.ready else None

    def file(self, name: str) -> Path | None:
        return self.files.get(name)

    def require_file(self, name: str, why: str) -> Path:
        """The file ``[files] name``. :raises ManifestError: one sentence naming the entry."""
        if name not in self.files:
            raise ManifestError(
                f"solution {self.name!r} ({self.path}) has no [files] {name}: {why}. "
                f"Files it declares: {', '.join(sorted(self.files)) or 'none'}."
            )
        return self.files[name]

    def require_filter(self, question: str, meaning: str) -> str:
        """The filter ``[filters] question``. :raises ManifestError: naming the entry."""
        if question not in self.filters:
            raise ManifestError(
                f"solution {self.name!r} ({self.path}) has no [filters] {question}: this lesson "
                f"needs the topic filter for {meaning}. Filters it declares: "
                f"{', '.join(sorted(self.filters)) or 'none'}."
            )
        return self.filters[question]


def _fill(template: str, values: dict[str, Any], solution: Solution, role: str) -> str:
    try:
        return template.format_map(values)
    except KeyError as error:
        raise ManifestError(
            f"solution {solution.name!r}: the {role} role uses placeholder {{{error.args[0]}}}, "
            f"which this lesson does not provide here"
        ) from error


def load(path: str | Path | None = None) -> Solution:
    """Read and check a manifest (default: the reference solution).

    :raises ManifestError: for a missing file, TOML errors, missing commands,
        unknown placeholders, files that do not exist or lie outside the manifest's folder.
    """
    path = Path(path or REFERENCE_MANIFEST)
    if path.is_dir():
        path = path / "solution.toml"
    path = path.resolve()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as error:
        raise ManifestError(
            f"no solution manifest at {path}: pass --solution PATH to a solution.toml "
            f"(see {REFERENCE_MANIFEST.name} in the lab for an example)"
        ) from error
    except tomllib.TOMLDecodeError as error:
        raise ManifestError(f"{path} is not valid TOML: {error}") from error

    where = str(path)
    meta = data.get("solution", {})
    name = meta.get("name") or path.parent.name
    roles_data = data.get("roles")
    if not isinstance(roles_data, dict) or not roles_data:
        raise ManifestError(
            f"{where}: no [roles.<name>] tables; at least [roles.device] is expected"
        )
    roles: dict[str, Role] = {}
    for role_name, spec in roles_data.items():
        if not isinstance(spec, dict) or "command" not in spec:
            raise ManifestError(f"{where}: [roles.{role_name}] needs a `command`")
        command = _argv(spec["command"], f"{where}: [roles.{role_name}] command")
        options = {
            option: _argv(args, f"{where}: [roles.{role_name}.options] {option}")
            for option, args in (spec.get("options") or {}).items()
        }
        ready = spec.get("ready")
        if ready is not None and not isinstance(ready, str):
            raise ManifestError(f"{where}: [roles.{role_name}] ready must be a string")
        for part in (*command, *(p for args in options.values() for p in args), ready or ""):
            _check_placeholders(part, f"{where}: [roles.{role_name}]", extra=set(options))
        roles[role_name] = Role(role_name, command, ready, options)

    files = {key: _inside(path.parent, key, relative, where) for key, relative in
             (data.get("files") or {}).items()}  # fmt: skip

    filters_data = data.get("filters") or {}
    if not isinstance(filters_data, dict) or not all(
        isinstance(v, str) and v for v in filters_data.values()
    ):
        raise ManifestError(
            f"{where}: [filters] must map question names to topic filter strings, such as "
            'all_alarms = "{root}/alarms/#"'
        )
    return Solution(path=path, name=name, roles=roles, files=files, filters=dict(filters_data))


def _inside(folder: Path, key: str, relative: Any, where: str) -> Path:
    """``[files] key = relative``: a file of the solution, inside its folder once every
    symlink is followed. An absolute path (``/etc/shadow``), ``..`` or a link that leaves the
    folder would have the lab copy a file that is not the student's into a broker
    configuration, and quote it in a report."""
    if not isinstance(relative, str) or not relative:
        raise ManifestError(f"{where}: [files] {key} must be a path relative to {folder.name}/")
    file_path = (folder / relative).resolve()
    if Path(relative).is_absolute() or not file_path.is_relative_to(folder.resolve()):
        raise ManifestError(
            f"{where}: [files] {key} = {relative!r} is outside the solution's folder: every "
            f"file of a solution lives in its folder; write a path relative to "
            f"{folder.name}/ (a symlink must point inside it too)"
        )
    if not file_path.is_file():
        raise ManifestError(
            f"{where}: [files] {key} = {relative!r} does not exist (or is not a file)"
        )
    return file_path


def _argv(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(shlex.split(value))
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ManifestError(f"{where} must be a non-empty list of strings (or one command line string)")


def _check_placeholders(text: str, where: str, extra: set[str]) -> None:
    for _, field_name, _, _ in string.Formatter().parse(text):
        if field_name is not None and field_name not in PLACEHOLDERS and field_name not in extra:
            raise ManifestError(
                f"{where}: unknown placeholder {{{field_name}}} in {text!r}; "
                f"known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
            )
