"""The same mistake, failing many experiments: grouped, so that a student reads it once.

A broken ACL fails 24 cells of lesson 06 with one message that differs only by topic; an ACL
without the lab's round trip fails all 108 with one sentence. The terminal (the plugin) and
the grader's reports (``grading/report.py``) show such a group once: "the same mistake in 24
experiments: ..., first ...". Two failures are the same mistake when their teaching messages
are equal once topics (any word with a ``/``), numbers and the ``file:line: Kind`` heading
are left out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

_HEADING = re.compile(r"^\S+:\d+: \w+\n")
#: the line pytest-xdist puts before a worker's report
_WORKER = re.compile(r"^\[gw\d+\] .*\n")
_TOPIC = re.compile(r"\S*/\S*")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
#: random ids (client ids, topic roots): hex runs with a digit in them
_HEX = re.compile(r"\b(?=[0-9a-f]*\d)[0-9a-f]{6,}\b")


#: how a repeated failure's report points at the first one (see the plugin)
SAME_AS = "(the same mistake as "


def same_as(first: str) -> str:
    """The line a repeated failure's report ends with."""
    return f"{SAME_AS}{first}: its report shows the evidence)"


def mistake_key(message: str) -> str:
    """What two failures of the same mistake have in common (for grouping, never for display)."""
    lines = [line for line in message.strip().splitlines() if not line.startswith(SAME_AS)]
    text = _HEADING.sub("", _WORKER.sub("", "\n".join(lines), count=1), count=1)
    first_paragraph = text.split("\n\n", 1)[0]
    return _NUMBER.sub("#", _HEX.sub("#", _TOPIC.sub("<topic>", first_paragraph))).strip()


def headline(message: str, limit: int = 240) -> str:
    """The message's first sentence or line, without its ``file:line: Kind`` heading."""
    text = _HEADING.sub("", _WORKER.sub("", message.strip(), count=1), count=1).strip()
    line = text.splitlines()[0] if text else "(no message)"
    return line if len(line) <= limit else line[: limit - 1] + "…"


@dataclass
class Mistake:
    """One group: the first failure's name and message, and every experiment that shares it."""

    first: str
    message: str
    names: list[str] = field(default_factory=list)


def group(failures: Iterable[tuple[str, str]]) -> list[Mistake]:
    """``[(name, message), ...]`` → groups in the order their first failure came."""
    groups: dict[str, Mistake] = {}
    for name, message in failures:
        key = mistake_key(message)
        if key not in groups:
            groups[key] = Mistake(name, message)
        groups[key].names.append(name)
    return list(groups.values())


def names_in_short(names: list[str], limit: int = 6) -> str:
    """``a, b, c … (+12 more)``."""
    more = f" … (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def describe(mistake: Mistake, limit: int = 240) -> str:
    """``the same mistake in 24 experiments: <headline> (first: <name>)``."""
    return (
        f"the same mistake in {len(mistake.names)} experiments: "
        f"{headline(mistake.message, limit)} (first: {mistake.first})"
    )
