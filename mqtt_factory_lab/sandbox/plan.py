"""What the sandbox runs: its programs, in start order, with their arguments and ready lines.

=============  ==========================================  =============================
name           program                                      ready when it prints
=============  ==========================================  =============================
broker         mosquitto, ``docker/`` files (or Docker)     (answers an MQTT CONNECT)
factory        ``sim.run_all --no-dashboard``: devices,     ``ready run_all``
               controller, observer
datacenter     ``sim.datacenter`` (SQLite in the state dir) ``ready datacenter``
chocolate      ``sim.chocolate``: the 8-step line           ``ready choc-line-a``
dashboard      ``sim.dashboard``: both views                ``dashboard at <url>``
=============  ==========================================  =============================

The data center starts before the line so that it stores the line's first message. Every
program reads the broker's address from ``VF_BROKER_HOST``/``VF_BROKER_PORT`` (and under
``--mtls`` its certificate from ``VF_TLS_CA``/``VF_TLS_CERT``/``VF_TLS_KEY``: :mod:`.tls`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mqtt_factory_lab.sandbox.processes import python_module

DEFAULT_PORT = 1884
DEFAULT_HTTP_PORT = 8080
CHOCOLATE_ID = "choc-line-a"
DATACENTER_ID = "datacenter"
#: the devices ``sim.run_all`` starts (device id = kind = client id); the contract's
#: ``device_kind`` (schemas/common.schema.json) lists the same
DEVICES = ("press", "conveyor", "robot_arm", "oven", "packer", "environment")


@dataclass(frozen=True)
class Options:
    """What ``sandbox up`` was asked for."""

    port: int = DEFAULT_PORT
    http_port: int = DEFAULT_HTTP_PORT
    acl: bool = False
    persistent_controller: bool = False
    anomaly: bool = False
    chocolate: bool = True
    broker_backend: str = "auto"
    #: lesson 08: the certificate folder of ``--mtls`` (:mod:`.tls`), or None for plain MQTT;
    #: the broker becomes ``mtls``, every program presents a certificate of its own
    mtls: str | None = None
    #: the Prometheus exporter's port (lesson 11, ``sim.run_all --metrics-port``); None: none
    metrics_port: int | None = None


@dataclass(frozen=True)
class Program:
    name: str
    argv: list[str]
    #: a regular expression matching its ready line in its log
    ready: str
    what: str


def programs(options: Options, database: Path) -> list[Program]:
    """The sandbox's programs after the broker, in start order."""
    factory = ["--no-dashboard"]
    if options.anomaly:
        factory.append("--anomaly")
    if options.persistent_controller:
        factory += ["--controller-session", "persistent"]
    if options.mtls:
        factory += ["--mtls", options.mtls]  # run_all hands each child its own certificate
    if options.metrics_port is not None:
        factory += ["--metrics-port", str(options.metrics_port)]
    listed = [
        Program(
            "factory",
            python_module("sim.run_all", *factory),
            r"^ready run_all\s*$",
            f"devices ({', '.join(DEVICES)}), controller, observer",
        )
    ]
    if options.chocolate:
        listed += [
            Program(
                "datacenter",
                python_module(
                    "sim.datacenter", "--db", str(database), "--client-id", DATACENTER_ID
                ),
                rf"^ready {DATACENTER_ID}\s*$",
                f"chocolate data center, SQLite {database}",
            ),
            Program(
                "chocolate",
                python_module("sim.chocolate", "--client-id", CHOCOLATE_ID),
                rf"^ready {CHOCOLATE_ID}\s*$",
                "the chocolate line (8 steps, white, milk, dark)",
            ),
        ]
    listed.append(
        Program(
            "dashboard",
            python_module(
                "sim.dashboard",
                *("--client-id", "dashboard", "--username", "dashboard"),
                *("--http-host", "127.0.0.1", "--http-port", str(options.http_port)),
            ),
            r"^dashboard at (\S+)\s*$",
            "devices, command center, chocolate line, traffic, live log",
        )
    )
    return listed
