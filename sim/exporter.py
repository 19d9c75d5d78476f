"""A Prometheus exporter for the factory: what MQTT says, as metrics a dashboard can graph.

::

    $ python -m sim.exporter --metrics-port 9108
    ready exporter-1a2b3c4d
    $ curl -s localhost:9108/metrics | grep factory_device_online
    factory_device_online{device="press"} 1.0

It subscribes to ``<root>/#`` and to ``$SYS/broker/#`` (a ``#`` subscription never gets
``$SYS`` topics, MQTT-4.7.2-1) and serves ``/metrics`` with the ``prometheus-client``
library. The metrics (:data:`METRICS`; ``docs/observability.md`` is their contract):

===================================  =======  ==================================================
``factory_device_online``            gauge    1 while the device's retained status is ``online``,
                                              0 after ``offline`` (its shutdown or Last Will)
``factory_device_state``             enum     the device's retained state (running, stopped...)
``factory_telemetry_value``          gauge    the last reading, per device, sensor and unit
``factory_alarms_raised_total``      counter  alarms raised, each alarm counted once
``factory_messages_total``           counter  messages received, by topic type and QoS
``factory_datacenter_lag_seconds``   gauge    newest message seen minus newest the data center
                                              stored (``--datacenter-db``)
``factory_datacenter_dead_letters``  gauge    rows in the data center's ``dead_letters``
``mqtt_broker_*``                    various  the broker's ``$SYS`` figures
===================================  =======  ==================================================

**An alarm is counted once**, however often it is delivered: QoS 1 is *at least once*, so
a publisher that retries after a lost PUBACK, or a redelivery after a reconnect, hands the
same alarm over again. The exporter recognises it by ``(device_id, sensor, ts)``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sqlite3
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import paho.mqtt.client as mqtt
from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from sim.connection import BrokerSettings, add_arguments, connect, make_client
from sim.runtime import StopSignals, broker_settings, setup_logging
from sim.subscriber import Subscriber
from sim.topics import Topics

log = logging.getLogger("exporter")

#: the exporter's metrics: name -> (type, labels, help). The contract of ``[roles.exporter]``.
METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "factory_device_online": ("gauge", ("device",), "1 while the device's status is online"),
    "factory_device_state": ("stateset", ("device",), "the device's current (retained) state"),
    "factory_telemetry_value": (
        "gauge",
        ("device", "sensor", "unit"),
        "the device's last telemetry reading",
    ),
    "factory_alarms_raised_total": (
        "counter",
        ("device", "sensor", "severity"),
        "alarms raised, each counted once however often it was delivered",
    ),
    "factory_messages_total": ("counter", ("type", "qos"), "messages received, by type and QoS"),
    "factory_datacenter_lag_seconds": (
        "gauge",
        (),
        "newest message seen minus newest message the data center stored",
    ),
    "factory_datacenter_dead_letters": ("gauge", (), "messages the data center rejected"),
    "mqtt_broker_clients_connected": ("gauge", (), "$SYS/broker/clients/connected"),
    "mqtt_broker_messages_received_total": ("counter", (), "$SYS/broker/messages/received"),
    "mqtt_broker_messages_sent_total": ("counter", (), "$SYS/broker/messages/sent"),
    "mqtt_broker_retained_messages": ("gauge", (), "$SYS/broker/retained messages/count"),
    "mqtt_broker_uptime_seconds": ("gauge", (), "$SYS/broker/uptime"),
}
#: the $SYS topics behind the mqtt_broker_* metrics
SYS_TOPICS = {
    "$SYS/broker/clients/connected": "mqtt_broker_clients_connected",
    "$SYS/broker/messages/received": "mqtt_broker_messages_received_total",
    "$SYS/broker/messages/sent": "mqtt_broker_messages_sent_total",
    "$SYS/broker/retained messages/count": "mqtt_broker_retained_messages",
    "$SYS/broker/uptime": "mqtt_broker_uptime_seconds",
}
#: the device states of schemas/state.schema.json
STATES = ("running", "stopped", "fault")
#: how many alarm identities the exporter remembers to recognise a redelivery
SEEN_ALARMS = 10_000


class FactoryMetrics:
    """The metrics, updated from MQTT messages; registered in their own registry."""

    def __init__(self, topics: Topics, datacenter_db: Path | None = None) -> None:
        self.topics = topics
        self.datacenter_db = datacenter_db
        self.registry = CollectorRegistry()
        self.online = Gauge(*_args("factory_device_online"), registry=self.registry)
        self.state = Enum(
            "factory_device_state",
            METRICS["factory_device_state"][2],
            ["device"],
            states=list(STATES),
            registry=self.registry,
        )
        self.telemetry = Gauge(*_args("factory_telemetry_value"), registry=self.registry)
        self.alarms = Counter(
            "factory_alarms_raised",
            METRICS["factory_alarms_raised_total"][2],
            METRICS["factory_alarms_raised_total"][1],
            registry=self.registry,
        )
        self.messages = Counter(
            "factory_messages",
            METRICS["factory_messages_total"][2],
            METRICS["factory_messages_total"][1],
            registry=self.registry,
        )
        self.sys: dict[str, float] = {}
        self.newest_seen = 0.0
        self._seen_alarms: OrderedDict[tuple, None] = OrderedDict()
        self._lock = threading.Lock()
        self.registry.register(_Snapshot(self))

    # -- messages ------------------------------------------------------------
    def on_message(self, message: mqtt.MQTTMessage) -> None:
        if message.topic in SYS_TOPICS:
            self.on_sys(message.topic, message.payload)
            return
        kind = self.topics.kind_of(message.topic)
        if kind is None:
            return
        self.messages.labels(type=kind, qos=str(message.qos)).inc()
        self.newest_seen = time.time()
        try:
            payload = json.loads(message.payload)
        except ValueError:
            return
        if not isinstance(payload, dict):
            return
        handler = getattr(self, f"on_{kind}", None)
        if handler is not None:
            try:
                handler(payload)
            except (KeyError, TypeError, ValueError) as error:
                log.warning("ignored a %s payload on %s: %r", kind, message.topic, error)

    def on_status(self, payload: dict[str, Any]) -> None:
        self.online.labels(device=payload["device_id"]).set(
            1 if payload["status"] == "online" else 0
        )

    def on_state(self, payload: dict[str, Any]) -> None:
        if payload["state"] in STATES:
            self.state.labels(device=payload["device_id"]).state(payload["state"])

    def on_telemetry(self, payload: dict[str, Any]) -> None:
        self.telemetry.labels(
            device=payload["device_id"], sensor=payload["sensor"], unit=payload.get("unit", "")
        ).set(float(payload["value"]))

    def on_alarms(self, payload: dict[str, Any]) -> None:
        if payload.get("state") != "raised":
            return
        if self.alarm_is_new((payload["device_id"], payload["sensor"], payload["ts"])):
            self.alarms.labels(
                device=payload["device_id"],
                sensor=payload["sensor"],
                severity=payload.get("severity", ""),
            ).inc()

    def alarm_is_new(self, identity: tuple) -> bool:
        """Whether this alarm was not counted yet (QoS 1 may deliver it more than once)."""
        with self._lock:
            if identity in self._seen_alarms:
                return False
            self._seen_alarms[identity] = None
            if len(self._seen_alarms) > SEEN_ALARMS:
                self._seen_alarms.popitem(last=False)
            return True

    def on_sys(self, topic: str, payload: bytes) -> None:
        text = payload.decode(errors="replace").split()
        try:
            self.sys[SYS_TOPICS[topic]] = float(text[0])
        except (IndexError, ValueError):
            log.debug("unreadable $SYS value on %s: %r", topic, payload)

    # -- the data center -------------------------------------------------------
    def datacenter_figures(self) -> tuple[float, float] | None:
        """``(lag seconds, dead letters)`` from the data center's database, read-only."""
        if self.datacenter_db is None or not self.datacenter_db.exists():
            return None
        try:
            with sqlite3.connect(f"file:{self.datacenter_db}?mode=ro", uri=True, timeout=1) as db:
                newest = db.execute("SELECT MAX(received_at) FROM mqtt_messages").fetchone()[0]
                dead = db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]
        except sqlite3.Error as error:
            log.warning("cannot read the data center's database: %s", error)
            return None
        lag = max(0.0, self.newest_seen - newest) if newest and self.newest_seen else 0.0
        return lag, float(dead)


class _Snapshot(Collector):
    """The figures that are read, not counted: the broker's $SYS and the data center."""

    def __init__(self, metrics: FactoryMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        for name, value in sorted(self.metrics.sys.items()):
            kind, _, help_text = METRICS[name]
            if kind == "counter":
                yield CounterMetricFamily(name.removesuffix("_total"), help_text, value=value)
            else:
                yield GaugeMetricFamily(name, help_text, value=value)
        figures = self.metrics.datacenter_figures()
        if figures is not None:
            lag, dead = figures
            for name, value in (
                ("factory_datacenter_lag_seconds", lag),
                ("factory_datacenter_dead_letters", dead),
            ):
                yield GaugeMetricFamily(name, METRICS[name][2], value=value)


def _args(name: str) -> tuple[str, str, tuple[str, ...]]:
    _, labels, help_text = METRICS[name]
    return name, help_text, labels


class Exporter:
    """Subscribes to the factory and to $SYS, and serves the metrics over HTTP."""

    def __init__(
        self,
        client_id: str,
        settings: BrokerSettings,
        port: int,
        *,
        datacenter_db: Path | None = None,
        metrics: FactoryMetrics | None = None,
    ) -> None:
        self.client_id = client_id
        self.metrics = metrics or FactoryMetrics(Topics(settings.topic_root), datacenter_db)
        self.port = port
        self.client = make_client(client_id, settings)
        self.settings = settings
        filters = [f"{settings.topic_root}/#", "$SYS/broker/#"]
        self.subscriber = Subscriber(self.client, client_id, filters, 1)
        self.client.on_message = lambda client, userdata, message: self.metrics.on_message(message)
        self._server: Any = None

    def start(self) -> None:
        # prometheus_client's WSGI app on a server of our own: its start_http_server polls for
        # shutdown every 0.5 s, and an exporter told to stop should be gone at once.
        server = make_server(
            "127.0.0.1", self.port, make_wsgi_app(self.metrics.registry), handler_class=_Quiet
        )
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        self._server = (server, thread)
        connect(self.client, self.settings)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        if self._server is not None:
            server, thread = self._server
            server.shutdown()
            server.server_close()
            thread.join(timeout=2)


class _Quiet(WSGIRequestHandler):
    """No access log on stderr for every scrape."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sim.exporter",
        description="Expose the factory's MQTT traffic and the broker's $SYS figures as "
        "Prometheus metrics on http://127.0.0.1:PORT/metrics.",
    )
    parser.add_argument("--metrics-port", type=int, required=True, metavar="PORT")
    parser.add_argument("--client-id", help="client id (default exporter-<random>)")
    parser.add_argument(
        "--datacenter-db",
        type=Path,
        metavar="FILE",
        help="the data center's SQLite database, read-only, for its lag and dead letters",
    )
    add_arguments(parser)
    return parser


def main(
    argv: Sequence[str] | None = None, metrics_class: type[FactoryMetrics] = FactoryMetrics
) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = broker_settings(parser, args)
    setup_logging("%(asctime)s exporter %(levelname)s %(message)s")
    client_id = args.client_id or f"exporter-{uuid.uuid4().hex[:8]}"
    metrics = metrics_class(Topics(settings.topic_root), args.datacenter_db)
    exporter = Exporter(client_id, settings, args.metrics_port, metrics=metrics)
    with StopSignals() as stop:
        try:
            exporter.start()
        except OSError as error:
            log.error(
                "cannot serve metrics on 127.0.0.1:%d (%s): choose another --metrics-port",
                args.metrics_port,
                error,
            )
            return 1
        except ConnectionError as error:
            log.error("%s", error)
            exporter.stop()
            return 1
        try:
            refused = exporter.subscriber.wait(10.0)
            if refused is not None:
                log.error("%s", refused)
                return 1
            stop.wait()
            return 0
        finally:
            exporter.stop()


if __name__ == "__main__":
    sys.exit(main())
