"""Start a solution's factory programs against a broker, and know when they are ready.

Pytest-free, like the broker backends: :class:`FactoryLauncher` starts roles
from a :class:`~mqtt_factory_lab.core.solution.Solution` and stops them all in
:meth:`FactoryLauncher.close`. A device is ready when its retained
``online`` status is on the broker — the same signal a dashboard trusts — so a
student's device needs no special "ready" output. Other roles are ready when
they print the manifest's ``ready`` line, or when the broker logs their
connection.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from mqtt_factory_lab.brokers.base import LOG, Broker
from mqtt_factory_lab.brokers.mosquitto_log import connections
from mqtt_factory_lab.contract import PayloadError, device_kinds, validate
from mqtt_factory_lab.core.client import MQTTTimeout, RecordingClient
from mqtt_factory_lab.core.connection import VF_CONNECTION_VARIABLES, ConnectionSettings
from mqtt_factory_lab.core.process import ProcessTimeout, wait_until
from mqtt_factory_lab.core.roles import RoleError, RoleProcess
from mqtt_factory_lab.core.solution import Solution

#: the machines a factory has, as the payload contract names them (schemas/common.schema.json)
DEVICE_KINDS = device_kinds()


def _json_object(payload: bytes) -> dict[str, Any]:
    """A payload's JSON object, or ``{}`` for anything else."""
    try:
        document = json.loads(payload)
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}


class Address(Protocol):
    """Where a program is told the broker is: a :class:`Broker`, or any host and port."""

    host: str
    port: int


def program_env(
    broker: Broker | Address, topic_root: str = "factory", protocol: str = "5"
) -> dict[str, str]:
    """The environment a factory program gets: ``os.environ`` plus the broker's ``VF_*`` settings.

    The solution contract passes broker settings this way only, so a student's
    program in any language finds the broker under test (see ``sim/connection.py``):
    host and port, and for a broker with a login, TLS or WebSockets (``--broker-url``)
    ``VF_USERNAME``/``VF_PASSWORD``, ``VF_TLS``/``VF_TLS_CA``/``VF_TLS_CERT``/``VF_TLS_KEY``,
    ``VF_TRANSPORT``/``VF_WS_PATH``, for the listener of ``protocol``. Connection variables
    of the lab's own environment are dropped, so a program never mixes two brokers' settings.
    """
    connection = getattr(broker, "connection", None)
    if not isinstance(connection, ConnectionSettings):
        connection = ConnectionSettings(broker.host, broker.port)
    inherited = {k: v for k, v in os.environ.items() if k not in VF_CONNECTION_VARIABLES}
    return {
        **inherited,
        **connection.for_protocol(protocol).to_env(),
        "VF_TOPIC_ROOT": topic_root,
        "VF_MQTT_PROTOCOL": protocol,
        "PYTHONUNBUFFERED": "1",
    }


@dataclass
class DeviceHandle:
    """A running device program.

    :ivar kind: press, conveyor...
    :ivar device_id: the id in its topics.
    :ivar client_id: its MQTT client id.
    :ivar process: the program.
    :ivar online_after: seconds from start to its retained ``online`` status.
    """

    kind: str
    device_id: str
    client_id: str
    process: RoleProcess
    topic_root: str
    online_after: float = 0.0
    status: dict[str, Any] = field(default_factory=dict)

    def topic(self, kind: str, sensor: str | None = None) -> str:
        """``handle.topic("telemetry", "temperature")`` → ``<root>/telemetry/<id>/temperature``."""
        base = f"{self.topic_root}/{kind}/{self.device_id}"
        return f"{base}/{sensor}" if sensor else base

    def stop(self) -> int | None:
        return self.process.stop()

    def kill(self) -> None:
        self.process.kill()


class FactoryLauncher:
    """Starts roles of one solution against one broker under one topic root.

    :param solution: the manifest in use.
    :param broker: the broker the programs connect to.
    :param topic_root: their ``VF_TOPIC_ROOT``.
    :param seed: base seed; each device gets ``seed`` plus its index.
    :param time_scale: plant seconds per wall second.
    :param rate: telemetry rounds per wall second.
    :param protocol: MQTT version the programs should use (``VF_MQTT_PROTOCOL``).
    :param env_for: more environment for one program, from its role and placeholder values
        (lesson 08 gives each machine its own ``VF_TLS_CERT``/``VF_TLS_KEY``).
    """

    def __init__(
        self,
        solution: Solution,
        broker: Broker,
        topic_root: str,
        *,
        seed: int = 1,
        time_scale: float = 60.0,
        rate: float = 10.0,
        protocol: str = "5",
        ready_timeout: float = 10.0,
        env_for: Callable[[str, dict[str, Any]], dict[str, str]] | None = None,
    ) -> None:
        self.solution = solution
        self.env_for = env_for
        self.broker = broker
        self.topic_root = topic_root
        self.seed = seed
        self.time_scale = time_scale
        self.rate = rate
        self.protocol = protocol
        self.ready_timeout = ready_timeout
        self.processes: list[RoleProcess] = []
        self.devices: dict[str, DeviceHandle] = {}
        self._status_watcher: RecordingClient | None = None

    # -- environment -------------------------------------------------------
    def env(self) -> dict[str, str]:
        return program_env(self.broker, self.topic_root, self.protocol)

    def start_role(
        self,
        role: str,
        name: str,
        *,
        options: dict[str, Any] | None = None,
        wait_ready: bool = True,
        **values: Any,
    ) -> RoleProcess:
        """Start any role; wait for its ready line (or its connection in the broker log)."""
        values.setdefault("client_id", name)
        values.setdefault("seed", self.seed)
        command = self.solution.command(role, options, **values)
        env = {**self.env(), **(self.env_for(role, values) if self.env_for else {})}
        process = RoleProcess(role, name, command, env=env, cwd=self.solution.root)
        mark = self.broker.log_mark()
        self.processes.append(process.start())
        if wait_ready:
            ready = self.solution.ready_line(role, **values)
            if ready is not None:
                process.wait_for_output(
                    f"^{re.escape(ready)}$",
                    self.ready_timeout,
                    line=ready,
                    advice=f"make the program print {ready!r} on stdout once it is connected "
                    f"(or remove `ready` from [roles.{role}] in the manifest)",
                )
            elif LOG in self.broker.capabilities:
                self._wait_connected(process, values["client_id"], mark)
        return process

    def _wait_connected(self, process: RoleProcess, client_id: str, mark: int) -> None:
        def in_log() -> bool:
            logged = connections(self.broker.log_lines()[mark:])
            return any(c.client_id == client_id for c in logged)

        try:
            wait_until(in_log, self.ready_timeout, stop_early=lambda: not process.is_running())
            return
        except ProcessTimeout:
            if in_log():
                return
        if not process.is_running():
            raise RoleError(process.describe_failure("exited before connecting to the broker"))
        raise RoleError(
            process.describe_failure(
                f"never connected to the broker as client id {client_id!r} within {self.ready_timeout}s",
                "connect to VF_BROKER_HOST:VF_BROKER_PORT with the client id the lab gives",
            )
        )

    # -- devices -----------------------------------------------------------
    def start_device(
        self,
        kind: str = "press",
        device_id: str | None = None,
        *,
        client_id: str | None = None,
        anomaly: bool = False,
        crash_after: float | None = None,
        duration: float | None = None,
        seed: int | None = None,
        wait_online: bool = True,
        options: dict[str, Any] | None = None,
    ) -> DeviceHandle:
        """Start a device and (by default) wait for its retained ``online`` status.

        :param options: more manifest options for the device's command (``keepalive``...).
        """
        if kind not in DEVICE_KINDS:
            raise ValueError(
                f"unknown device kind {kind!r}; the factory has {', '.join(DEVICE_KINDS)}"
            )
        device_id = device_id or f"{kind.replace('_', '-')}-{len(self.devices) + 1:02d}"
        client_id = client_id or f"{device_id}-{uuid.uuid4().hex[:6]}"
        watcher = self._watcher()
        status_topic = f"{self.topic_root}/status/{device_id}"
        # Retain as published: the watcher is subscribed before the device publishes, and a live
        # delivery would otherwise carry retain=0 whether or not the device retained it.
        watcher.subscribe(status_topic, qos=1, retain_as_published=True)
        started = time.monotonic()
        process = self.start_role(
            "device",
            device_id,
            options={
                "anomaly": anomaly,
                "crash_after": crash_after,
                "duration": duration,
                **(options or {}),
            },
            wait_ready=False,
            kind=kind,
            device_id=device_id,
            client_id=client_id,
            seed=self.seed + len(self.devices) if seed is None else seed,
            time_scale=self.time_scale,
            rate=self.rate,
        )
        handle = DeviceHandle(kind, device_id, client_id, process, self.topic_root)
        self.devices[device_id] = handle
        if wait_online:
            handle.status = self._wait_online(handle, watcher, status_topic)
            handle.online_after = time.monotonic() - started
        return handle

    def wait_online(self, handle: DeviceHandle, *, strict: bool = True) -> dict[str, Any]:
        """Wait for the ``online`` status of a device started with ``wait_online=False``.

        Starting several devices that way and then waiting for each lets them start together;
        the checks are those of :meth:`start_device` (a valid, retained ``online`` within
        ``ready_timeout``), the status is kept in ``handle.status`` and returned.

        :param strict: ``False`` accepts any JSON ``{"status": "online", ...}`` on the status
            topic, retained or not, schema-valid or not: for a lesson that judges those
            elsewhere (lesson 01 judges topics; retain is lesson 03's, and every payload is
            held to its schema by the experiment that reads it), so one mistake fails one
            experiment, not every experiment that starts a device.
        :raises RoleError: naming what the device did instead (exited, invalid status, not
            retained, nothing within the deadline).
        """
        handle.status = self._wait_online(
            handle, self._watcher(), handle.topic("status"), strict=strict
        )
        return handle.status

    def _wait_online(
        self, handle: DeviceHandle, watcher: RecordingClient, topic: str, *, strict: bool = True
    ) -> dict:
        deadline = time.monotonic() + self.ready_timeout
        while True:
            for message in watcher.received(topic):
                if not strict:
                    said = _json_object(message.payload)
                    if said.get("status") == "online":
                        return said
                    continue
                try:
                    status = validate("status", message.payload)
                except PayloadError as error:
                    raise RoleError(
                        handle.process.describe_failure(
                            f"published an invalid status on {topic}: {error}",
                            "publish status payloads that follow schemas/status.schema.json",
                        )
                    ) from error
                if status["status"] == "online":
                    if not message.retain:
                        raise RoleError(
                            handle.process.describe_failure(
                                f"published 'online' on {topic} without the retain flag, so a "
                                "dashboard that opens later would not know the device is online",
                                "publish the status with retain=True (and QoS 1); the broker then "
                                "keeps it and hands it to every new subscriber",
                            )
                        )
                    return status
            if not handle.process.is_running():
                raise RoleError(
                    handle.process.describe_failure(f"exited before publishing online on {topic}")
                )
            if time.monotonic() >= deadline:
                raise RoleError(
                    handle.process.describe_failure(
                        f"never published a retained 'online' status on {topic} within {self.ready_timeout}s",
                        'after connecting, publish {"status": "online", ...} retained at QoS 1 to '
                        "<VF_TOPIC_ROOT>/status/<device_id>",
                    )
                )
            with contextlib.suppress(MQTTTimeout):
                watcher.wait_for_messages(len(watcher.received(topic)) + 1, topic, timeout=0.2)

    def _watcher(self) -> RecordingClient:
        if self._status_watcher is None:
            settings = self.broker.connection.for_protocol("5")
            self._status_watcher = RecordingClient(
                settings.host,
                settings.port,
                f"lab-factory-watch-{uuid.uuid4().hex[:8]}",
                describe_broker=self.broker.health,
                connection=settings,
            )
            self._status_watcher.connect()
        return self._status_watcher

    def outputs(self) -> dict[str, str]:
        """What each started program printed, by ``role name``."""
        return {f"{p.role} {p.name}": p.output() for p in self.processes}

    def close(self) -> None:
        """Stop every program (SIGTERM, then SIGKILL) and the status watcher."""
        for process in reversed(self.processes):
            process.close()
        if self._status_watcher is not None:
            self._status_watcher.disconnect()
            self._status_watcher = None

    def __enter__(self) -> FactoryLauncher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
