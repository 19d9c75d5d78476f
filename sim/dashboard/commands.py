"""What a browser may ask the dashboard to publish, and why a request is refused.

The page sends a small JSON object to ``POST /api/commands``::

    {"device": "conveyor", "command": "set", "setpoint": "speed", "value": 1.5,
     "reason": "operator request"}

:func:`build_command` turns it into the command payload the device gets, or
raises :class:`RequestError` with one sentence for the page and the log. The
browser chooses only the device (one the dashboard has seen on the broker)
and the fields ``command``, ``reason``, ``setpoint`` and ``value``; the server
adds ``ts``, ``command_id`` and ``issued_by``, checks the result against
``schemas/command.schema.json`` and builds the topic itself. So the browser
can never publish to an arbitrary topic or send an arbitrary payload.

Whether a value is in range is the device's business: it answers an
out-of-range ``set`` with a ``command_rejected`` event, which the page shows.

Example::

    >>> known = {"conveyor": DeviceInfo(setpoints=frozenset({"speed"}))}
    >>> payload = build_command(b'{"device": "conveyor", "command": "stop"}', known, "dashboard")[1]
    >>> payload["command"], payload["issued_by"]
    ('stop', 'dashboard')
    >>> build_command(b'{"device": "oven", "command": "stop"}', known, "dashboard")
    Traceback (most recent call last):
    ...
    sim.dashboard.commands.RequestError: unknown device 'oven': the dashboard has seen conveyor
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from referencing import Registry, Resource

from sim.device import DEVICE_ID

SCHEMAS = Path(__file__).resolve().parent.parent.parent / "schemas"
#: what the browser may set; everything else is the server's
FROM_BROWSER = ("command", "reason", "setpoint", "value")
#: a request is a few fields; anything bigger is a mistake or an attack
MAX_REQUEST_BYTES = 4096


class RequestError(ValueError):
    """A command request the dashboard refuses; ``str()`` says why, for the page and the log."""


@dataclass(frozen=True)
class DeviceInfo:
    """What the dashboard knows about a device from its retained messages.

    :ivar setpoints: the names in its latest state's ``setpoints`` (empty
        until a state arrived).
    """

    setpoints: frozenset[str] = field(default_factory=frozenset)


@cache
def command_validator() -> Draft202012Validator:
    """A validator for ``command.schema.json``, its ``$ref`` s served from ``schemas/``.

    Nothing is fetched from the network: every schema file is registered under its ``$id``.
    """
    resources = []
    for path in sorted(SCHEMAS.glob("*.schema.json")):
        contents = json.loads(path.read_text(encoding="utf-8"))
        resources.append((contents["$id"], Resource.from_contents(contents)))
    registry = Registry().with_resources(resources)
    schema = json.loads((SCHEMAS / "command.schema.json").read_text(encoding="utf-8"))
    return Draft202012Validator(schema, registry=registry)


def _reject_constant(name: str) -> float:
    raise RequestError(f"the request contains {name}, which is not a number JSON allows")


def _decode(body: bytes) -> dict[str, Any]:
    if len(body) > MAX_REQUEST_BYTES:
        raise RequestError(
            f"the request is {len(body)} bytes; a command request is a small JSON object "
            f"(at most {MAX_REQUEST_BYTES} bytes)"
        )
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise RequestError("the request is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise RequestError(f"the request is not JSON ({error.msg})") from None
    except (RecursionError, ValueError) as error:
        if isinstance(error, RequestError):
            raise
        raise RequestError(f"the request is not usable JSON ({error})"[:200]) from None
    if not isinstance(data, dict):
        raise RequestError('a command request is a JSON object such as {"device": "press", ...}')
    return data


def _schema_problem(command: dict[str, Any]) -> str | None:
    error = best_match(command_validator().iter_errors(command))
    if error is None:
        return None
    where = "/".join(str(part) for part in error.absolute_path)
    return f"the command does not fit the command schema: {where + ': ' if where else ''}{error.message}"


def build_command(
    body: bytes,
    known: Mapping[str, DeviceInfo],
    issued_by: str,
    *,
    clock: Any = time.time,
) -> tuple[str, dict[str, Any]]:
    """The device id and the command payload for a browser's request.

    :param body: the raw request body.
    :param known: the devices the dashboard has seen, by id.
    :param issued_by: the dashboard's client id (also the topic's publisher level).
    :raises RequestError: saying what is wrong, in one sentence.
    """
    data = _decode(body)
    unknown = sorted(set(data) - {"device", *FROM_BROWSER})
    if unknown:
        names = ", ".join(repr(name[:40]) for name in unknown)
        raise RequestError(
            f"field{'s' if len(unknown) > 1 else ''} {names} may not come from the browser; "
            f"a request has 'device' and {', '.join(repr(n) for n in FROM_BROWSER)}"
        )
    device = data.get("device")
    if not isinstance(device, str) or not DEVICE_ID.fullmatch(device):
        raise RequestError("'device' must be a device id such as 'press'")
    if device not in known:
        seen = ", ".join(sorted(known)) or "no device yet"
        raise RequestError(f"unknown device {device!r}: the dashboard has seen {seen}")
    value = data.get("value")
    if isinstance(value, float) and not math.isfinite(value):
        raise RequestError("'value' must be a finite number")
    if data.get("command") == "set" and (
        isinstance(value, bool) or not isinstance(value, int | float)
    ):
        shown = "nothing" if value in (None, "") else json.dumps(value)[:40]
        raise RequestError(f"a 'set' command needs a number as its value, got {shown}")
    command: dict[str, Any] = {name: data[name] for name in FROM_BROWSER if name in data}
    if command.get("reason") == "":
        del command["reason"]
    command["ts"] = round(clock(), 3)
    command["command_id"] = f"{issued_by}-{uuid.uuid4().hex[:8]}"
    command["issued_by"] = issued_by
    problem = _schema_problem(command)
    if problem:
        raise RequestError(problem)
    setpoints = known[device].setpoints
    if command["command"] == "set" and setpoints and command["setpoint"] not in setpoints:
        raise RequestError(
            f"{device} has no setpoint {command['setpoint'][:40]!r}; "
            f"its setpoints are {', '.join(sorted(setpoints))}"
        )
    if "reason" not in command:
        what = command["command"]
        if what == "set":
            what = f"set {command['setpoint']}={command['value']:g}"
        command["reason"] = f"{what} from the dashboard ({command['command_id']})"
    return device, command
