"""The factory's topic namespace, in one place.

::

    <root>/telemetry/<device>/<sensor>   QoS 0            sensor readings
    <root>/alarms/<device>/<sensor>      QoS 1            raised / cleared
    <root>/commands/<publisher>/<device> QoS 1            start, stop, reset, set
    <root>/state/<device>                QoS 1, retained  running / stopped / fault
    <root>/status/<device>               QoS 1, retained  online / offline (Last Will)
    <root>/events/<component>            QoS 1            rejected commands, decisions
    <root>/replies/<device>/<requester>  QoS 1            answers to MQTT 5 requests (lesson 09)

``<root>`` is ``factory`` unless ``VF_TOPIC_ROOT`` says otherwise (tests give
each experiment its own root so they never see each other's messages).
"""

from __future__ import annotations

from dataclasses import dataclass

QOS = {
    "telemetry": 0,
    "alarms": 1,
    "commands": 1,
    "state": 1,
    "status": 1,
    "events": 1,
    "replies": 1,
}
RETAINED = frozenset({"state", "status"})
TOPIC_KINDS = tuple(QOS)
#: each client's private scratch space (``<prefix>/<client id>/#``), outside the factory's
#: namespace: the lab's "sync" round trips and the bad actor's probes use it
SYNC_PREFIX = "lab/sync"


@dataclass(frozen=True)
class Topics:
    """Topic names under one root."""

    root: str = "factory"

    def telemetry(self, device: str, sensor: str) -> str:
        return f"{self.root}/telemetry/{device}/{sensor}"

    def alarm(self, device: str, sensor: str) -> str:
        return f"{self.root}/alarms/{device}/{sensor}"

    def command(self, publisher: str, device: str) -> str:
        return f"{self.root}/commands/{publisher}/{device}"

    def commands_for(self, device: str) -> str:
        """Filter for every command addressed to ``device``, whoever sends it."""
        return f"{self.root}/commands/+/{device}"

    def state(self, device: str) -> str:
        return f"{self.root}/state/{device}"

    def status(self, device: str) -> str:
        return f"{self.root}/status/{device}"

    def events(self, component: str) -> str:
        return f"{self.root}/events/{component}"

    def reply(self, device: str, requester: str) -> str:
        """Where ``requester`` asks ``device`` to answer (its Response Topic, lesson 09)."""
        return f"{self.root}/replies/{device}/{requester}"

    def everything(self) -> str:
        return f"{self.root}/#"

    def kind_of(self, topic: str) -> str | None:
        """``"telemetry"``, ``"alarms"``... for a topic under this root, else None."""
        parts = topic.split("/")
        root_parts = self.root.split("/")
        if parts[: len(root_parts)] != root_parts or len(parts) <= len(root_parts):
            return None
        kind = parts[len(root_parts)]
        return kind if kind in QOS else None
