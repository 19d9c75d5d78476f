"""Follow a command the dashboard sent to the device's answer: accepted, rejected or silent.

A device answers a command in one of two ways (see ``sim/device.py``):

* it obeys: it publishes its new retained state, whose ``reason`` is the
  command's reason and whose ``commands_accepted`` counter went up;
* it refuses: it publishes a ``command_rejected`` event on
  ``<root>/events/<device>`` that quotes the command (``received``, and
  ``command_id`` when the command could be parsed), then its state.

:class:`OutcomeTracker` keeps the commands waiting for an answer and turns
those messages into outcomes. A command nobody answers within ``timeout``
seconds gets the outcome ``no answer`` (is the device online?).

Example::

    >>> tracker = OutcomeTracker("factory")
    >>> tracker.sent("press", {"command": "stop", "command_id": "d-1", "reason": "r"}, '{"command": "stop"}', 0.0)
    >>> state = b'{"state": "stopped", "reason": "r", "counters": {"commands_accepted": 1}}'
    >>> tracker.observe("factory/state/press", state)
    [{'type': 'outcome', 'command_id': 'd-1', 'device': 'press', 'result': 'accepted', 'detail': 'press is now stopped'}]
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any


@dataclass
class Pending:
    """A command sent and not yet answered."""

    device: str
    command_id: str
    reason: str
    payload_text: str
    accepted_before: int
    sent_at: float


class OutcomeTracker:
    """Commands waiting for their device's answer.

    :param root: the topic root.
    :param timeout: seconds after which an unanswered command is reported as such.
    """

    def __init__(self, root: str, timeout: float = 10.0) -> None:
        self.root = root
        self.timeout = timeout
        self.pending: list[Pending] = []
        #: each device's ``commands_accepted`` in its latest state
        self.accepted: dict[str, int] = {}

    def sent(
        self, device: str, command: dict[str, Any], payload_text: str, now: float | None = None
    ) -> None:
        """Remember a published command."""
        self.pending.append(
            Pending(
                device,
                command["command_id"],
                command.get("reason", ""),
                payload_text,
                self.accepted.get(device, 0),
                time.monotonic() if now is None else now,
            )
        )

    def observe(self, topic: str, payload: bytes) -> list[dict[str, Any]]:
        """The outcomes a received message settles (usually none)."""
        parts = topic[len(self.root) + 1 :].split("/") if topic.startswith(self.root + "/") else []
        if len(parts) != 2 or parts[0] not in ("state", "events"):
            return []
        device = parts[1]
        try:
            data = json.loads(payload)
        except ValueError:
            return []
        if not isinstance(data, dict):
            return []
        if parts[0] == "state":
            return self._state(device, data)
        return self._event(device, data)

    def _state(self, device: str, data: dict[str, Any]) -> list[dict[str, Any]]:
        counters = data.get("counters")
        accepted = counters.get("commands_accepted") if isinstance(counters, dict) else None
        if not isinstance(accepted, int):
            return []
        self.accepted[device] = accepted
        for pending in self.pending:
            if (
                pending.device == device
                and accepted > pending.accepted_before
                and data.get("reason") == pending.reason
            ):
                self.pending.remove(pending)
                state = data.get("state")
                detail = f"{device} is now {state}" if isinstance(state, str) else "accepted"
                return [self._outcome(pending, "accepted", detail)]
        return []

    def _event(self, device: str, data: dict[str, Any]) -> list[dict[str, Any]]:
        if data.get("event") != "command_rejected":
            return []
        for pending in self.pending:
            if pending.device != device:
                continue
            if data.get("command_id") == pending.command_id or (
                data.get("received") == pending.payload_text[:200]
            ):
                self.pending.remove(pending)
                reason = data.get("reason")
                return [
                    self._outcome(pending, "rejected", reason if isinstance(reason, str) else "")
                ]
        return []

    def expire(self, now: float | None = None) -> list[dict[str, Any]]:
        """Outcomes for the commands that waited longer than ``timeout``."""
        now = time.monotonic() if now is None else now
        expired = [p for p in self.pending if now - p.sent_at >= self.timeout]
        for pending in expired:
            self.pending.remove(pending)
        return [
            self._outcome(
                p,
                "no answer",
                f"{p.device} did not answer within {self.timeout:g}s: is it online and "
                f"subscribed to {self.root}/commands/+/{p.device}?",
            )
            for p in expired
        ]

    @staticmethod
    def _outcome(pending: Pending, result: str, detail: str) -> dict[str, Any]:
        return {
            "type": "outcome",
            "command_id": pending.command_id,
            "device": pending.device,
            "result": result,
            "detail": detail,
        }
