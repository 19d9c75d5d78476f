"""Commands sent to a device, and why a payload is not one.

A device must survive anything that arrives on its command topic: random
bytes, half-written JSON, a typo in a field name, ``NaN``. :func:`parse_command`
turns a payload into a :class:`Command` or raises :class:`CommandRejected`
whose ``reason`` tells the sender, in one sentence, what was wrong and what a
good command looks like. The device publishes that reason as an error event.

The wire format (see the payload contract)::

    {"command": "start" | "stop" | "reset" | "set",
     "reason": str, "ts": number, "command_id": str, "issued_by": str,   # all optional
     "setpoint": str, "value": number}                 # required for "set"

Example::

    >>> parse_command(b'{"command": "stop", "reason": "manual"}').reason
    'manual'
    >>> parse_command(b'{"command": "set", "setpoint": "speed", "value": 9}', kind="conveyor")
    Traceback (most recent call last):
    ...
    sim.commands.CommandRejected: value 9 is outside the allowed range of setpoint 'speed': 0..3 m/s
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from sim.machines import kind_spec, unknown_setpoint_reason

COMMANDS = ("start", "stop", "reset", "set")
OPTIONAL_TEXT_FIELDS = ("reason", "command_id", "issued_by")
NON_EMPTY_FIELDS = ("command_id", "issued_by", "setpoint")
#: the contract's bounds on ``ts``: Unix epoch seconds between 2000 and 2100
TS_RANGE = (946684800.0, 4102444800.0)
FIELDS = ("command", "reason", "ts", "command_id", "issued_by", "setpoint", "value")
#: a command is a small JSON object; anything bigger is a mistake or an attack
MAX_PAYLOAD_BYTES = 4096
EXAMPLE = '{"command": "stop", "reason": "manual"}'


class CommandRejected(ValueError):
    """The payload is not a command this device obeys; ``reason`` says why, for humans."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Command:
    """A well-formed command. Only ``set`` uses ``setpoint`` and ``value`` (it requires them)."""

    command: str
    setpoint: str | None = None
    value: float | None = None
    reason: str | None = None
    ts: float | None = None
    command_id: str | None = None
    issued_by: str | None = None

    def to_payload(self) -> dict[str, object]:
        """The JSON object for this command, without the fields that are unset."""
        payload: dict[str, object] = {"command": self.command}
        for name in FIELDS[1:]:
            value = getattr(self, name)
            if value is not None:
                payload[name] = value
        return payload

    def describe(self) -> str:
        """What the command does, in a few words: ``stop``, ``set speed=1.5``."""
        if self.command == "set":
            return f"set {self.setpoint}={self.value:g}"
        return self.command


def parse_command(
    payload: bytes | bytearray | memoryview | str, kind: str | None = None
) -> Command:
    """Parse a command payload, checking it against ``kind``'s setpoints when given.

    :param payload: the raw MQTT payload.
    :param kind: the receiving device's kind (``"oven"``...); with it, ``set``
        must name one of that kind's setpoints and stay within its range.
    :raises CommandRejected: with a one-sentence human reason.
    :raises ValueError: when ``kind`` itself is unknown (a programming error,
        not a bad command).
    """
    spec = kind_spec(kind) if kind is not None else None
    data = _decode(payload)
    if "command" not in data:
        raise CommandRejected(
            f"missing field 'command' (one of {', '.join(COMMANDS)}); for example {EXAMPLE}"
        )
    command = data["command"]
    if not isinstance(command, str):
        raise CommandRejected(f"'command' must be a string, got {_describe(command)}")
    if command not in COMMANDS:
        raise CommandRejected(
            f"unknown command {_quote(command)}; expected one of {', '.join(COMMANDS)}"
            + _suggestion(command, COMMANDS)
        )
    unknown = [name for name in data if name not in FIELDS]
    if unknown:
        names = ", ".join(_quote(name) for name in sorted(unknown))
        raise CommandRejected(
            f"unknown field{'s' if len(unknown) > 1 else ''} {names}"
            + _suggestion(sorted(unknown)[0], FIELDS)
            + f"; a command may only have: {', '.join(FIELDS)}"
        )
    for name in OPTIONAL_TEXT_FIELDS:
        if name in data and not isinstance(data[name], str):
            raise CommandRejected(f"{name!r} must be a string, got {_describe(data[name])}")
    for name in NON_EMPTY_FIELDS:
        if data.get(name) == "":
            raise CommandRejected(f"{name!r} must not be empty")
    ts = _timestamp(data["ts"]) if "ts" in data else None

    if command == "set":
        for name in ("setpoint", "value"):
            if name not in data:
                raise CommandRejected(
                    f"command 'set' needs {name!r}: for example "
                    '{"command": "set", "setpoint": "temperature", "value": 180}'
                )
    # The schema lets other commands carry these two as well; they are checked
    # like any field, and only 'set' uses them.
    setpoint = data.get("setpoint")
    if "setpoint" in data and not isinstance(setpoint, str):
        raise CommandRejected(f"'setpoint' must be a string, got {_describe(setpoint)}")
    value = _number(data, "value") if "value" in data else None
    if command == "set" and spec is not None and setpoint is not None and value is not None:
        setpoint_spec = spec.setpoint(setpoint)
        if setpoint_spec is None:
            raise CommandRejected(unknown_setpoint_reason(spec.kind, setpoint[:40]))
        problem = setpoint_spec.check(value)
        if problem:
            raise CommandRejected(problem)
    return Command(
        command=command,
        setpoint=setpoint,
        value=value,
        reason=data.get("reason"),
        ts=ts,
        command_id=data.get("command_id"),
        issued_by=data.get("issued_by"),
    )


def _decode(payload: bytes | bytearray | memoryview | str) -> dict[str, object]:
    """The payload as a JSON object, or CommandRejected."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8", errors="surrogatepass")
    raw = bytes(payload)
    if not raw.strip():
        raise CommandRejected(f"empty payload; a command is a JSON object such as {EXAMPLE}")
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise CommandRejected(
            f"payload is {len(raw)} bytes; a command is a small JSON object "
            f"(at most {MAX_PAYLOAD_BYTES} bytes)"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CommandRejected(
            f"payload is not UTF-8 text (byte 0x{raw[error.start]:02x} at position "
            f"{error.start}); send a JSON object such as {EXAMPLE}"
        ) from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except CommandRejected:
        raise
    except json.JSONDecodeError as error:
        raise CommandRejected(
            f"payload is not JSON ({error.msg} at line {error.lineno} column {error.colno}); "
            f"send a JSON object such as {EXAMPLE}"
        ) from None
    except (RecursionError, ValueError) as error:
        # RecursionError: absurdly deep nesting; ValueError: e.g. an integer
        # literal with more digits than Python accepts.
        raise CommandRejected(f"payload is not usable JSON ({error})"[:300]) from None
    if not isinstance(data, dict):
        raise CommandRejected(
            f"a command must be a JSON object, got {_describe(data)}; for example {EXAMPLE}"
        )
    return data


def _reject_constant(name: str) -> float:
    raise CommandRejected(
        f"payload contains {name}, which is not a finite number (and not standard JSON)"
    )


def _number(data: dict[str, object], name: str) -> float:
    value = data[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CommandRejected(f"{name!r} must be a number, got {_describe(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise CommandRejected(f"{name!r} must be a finite number, got one too large to represent")
    return number


def _timestamp(value: object) -> float:
    ts = _number({"ts": value}, "ts")
    low, high = TS_RANGE
    if not low <= ts <= high:
        hint = " (that looks like milliseconds; divide by 1000)" if ts > high else ""
        raise CommandRejected(
            f"'ts' must be Unix epoch seconds between 2000 and 2100 (such as time.time()), "
            f"got {ts:g}{hint}"
        )
    return ts


def _describe(value: object) -> str:
    """A JSON-flavoured description of a value: ``string "x"``, ``boolean true``..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int | float):
        text = repr(value)
        return f"number {text if len(text) <= 20 else text[:17] + '...'}"
    if isinstance(value, str):
        return f"string {_quote(value)}"
    if isinstance(value, list):
        return f"an array of {len(value)} item{'' if len(value) == 1 else 's'}"
    return "an object"


def _quote(text: str, limit: int = 40) -> str:
    """``text`` quoted for a message, shortened, with control characters escaped."""
    shown = text if len(text) <= limit else text[: limit - 3] + "..."
    return json.dumps(shown)


def _suggestion(word: str, choices: tuple[str, ...] | list[str]) -> str:
    lowered = word.strip().lower()
    if lowered in choices:
        return f" (did you mean {lowered!r}? names are lower case)"
    import difflib  # only to suggest a spelling for an unknown name: not at start

    close = difflib.get_close_matches(lowered, choices, n=1, cutoff=0.7)
    return f" (did you mean {close[0]!r}?)" if close else ""
