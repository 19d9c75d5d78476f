"""Lesson 10's instruments: marked payloads, the runs' record, and a command watched going out.

A run of lesson 10 (started ahead, see :mod:`mqtt_factory_lab.experiment.ahead`) publishes
payloads that carry a *marker* (a fresh hex word) so that its copies can be told from any
other message, and listens for them on both brokers of its pair. What it saw is a
:class:`Run`, judged by the experiment that asked for it.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from mqtt_factory_lab.contract import validate
from mqtt_factory_lab.core.bridge import BrokerPair
from mqtt_factory_lab.core.client import MQTTTimeout, ReceivedMessage, RecordingClient
from mqtt_factory_lab.experiment.ahead import ModuleClients

#: how long after the expected copies of a message the lab listens for one too many
QUIET = 1.0


def marked_alarm(device: str, marker: str) -> dict:
    """A valid alarm payload whose message carries ``marker``, to find it among the rest."""
    return validate(
        "alarm",
        {
            "ts": time.time(),
            "device_id": device,
            "sensor": "temperature",
            "state": "raised",
            "value": 231.5,
            "low": 20.0,
            "high": 220.0,
            "severity": "critical",
            "message": f"lesson 10 {marker}",
        },
    )


def marked_reading(device: str, marker: str) -> dict:
    """A valid telemetry payload carrying ``marker`` (in its device id: JSON has no comments)."""
    return validate(
        "telemetry",
        {
            "ts": time.time(),
            "device_id": f"{device}-{marker}",
            "sensor": "temperature",
            "value": 180.0,
            "unit": "degC",
            "seq": 1,
        },
    )


def carrying(marker: str) -> Callable[[ReceivedMessage], bool]:
    return lambda m: marker.encode() in m.payload


def client_on(mqtt_client: Callable[..., RecordingClient], broker, **kw) -> RecordingClient:
    return mqtt_client(broker=broker, **kw)


@dataclass
class Run:
    """What a run saw, for the experiment that judges it."""

    pair: BrokerPair
    #: each broker's log mark when the run began: a failure report shows the run's log lines
    marks: dict
    site: RecordingClient
    cloud: RecordingClient
    marker: str


def clients_on(stack: contextlib.ExitStack, pair: BrokerPair, name: str):
    """``(site, cloud)``: ``mqtt_client``-like factories for a run, disconnected with it."""
    site, cloud = ModuleClients(pair.site, f"{name}-site"), ModuleClients(pair.cloud, name)
    stack.callback(site.close)
    stack.callback(cloud.close)
    return site, cloud


def command_goes_out(site: RecordingClient, cloud: RecordingClient) -> str:
    """Publish a marked stop command on the site (``factory/commands/cloud/press-01``, which
    the bridge's way out and its way in both match) and wait until the cloud has it; return
    the marker. ``site`` and ``cloud`` are subscribed already."""
    marker = uuid.uuid4().hex[:8]
    command = validate("command", {"command": "stop", "reason": f"lesson 10 {marker}"})
    site.publish("factory/commands/cloud/press-01", command, qos=1)
    cloud.wait_for_message(carrying(marker), timeout=5, why="The command should go out.")
    return marker


def watch_a_command_go_out(stack, pair, marks, copies: int, name: str) -> Run:
    """Publish a command on the site that also matches the bridge's way in; listen for
    ``copies`` of it there, then QUIET seconds more for one too many."""
    site_clients, cloud_clients = clients_on(stack, pair, name)
    site = site_clients()
    site.subscribe("factory/commands/#", qos=1)
    cloud = cloud_clients()
    cloud.subscribe("sites/#", qos=1)
    marker = command_goes_out(site, cloud)
    with contextlib.suppress(MQTTTimeout):  # the copies that should come, then one too many
        site.wait_for_messages(copies, carrying(marker), timeout=5)
        site.wait_for_messages(copies + 1, carrying(marker), timeout=QUIET)
    site.sync()
    return Run(pair, marks, site, cloud, marker)
