"""Broker backends and the choice between them.

===========  ==============================================================
backend      what it starts
===========  ==============================================================
``local``    the ``mosquitto`` executable as a child process
``docker``   a Mosquitto container through testcontainers
``external`` nothing: a broker at ``--broker-url``
``auto``     docker when an engine answers, else local when mosquitto is
             installed, else an error naming the three ways out
===========  ==============================================================
"""

from __future__ import annotations

from mqtt_factory_lab.brokers.base import (
    CONFIG,
    LOG,
    RESTART,
    Broker,
    BrokerError,
    BrokerStartError,
    BrokerUnavailable,
    CapabilityMissing,
)
from mqtt_factory_lab.core.connection import ConnectionSettings

BACKENDS = ("auto", "local", "docker", "external")

NO_BACKEND = (
    "no MQTT broker is available for the lab. Any one of these fixes it:\n"
    "  1. install Mosquitto: `sudo apt-get install -y mosquitto` (Debian/Ubuntu), "
    "`brew install mosquitto` (macOS);\n"
    "  2. start Docker (the lab then runs the eclipse-mosquitto image);\n"
    "  3. point the lab at a broker you run: --broker-url mqtt://HOST:PORT "
    "(or MQTT_LAB_BROKER_URL)."
)


def resolve_backend(requested: str, url: str | None = None) -> str:
    """Turn ``auto`` into a concrete backend, checking that the chosen one can work.

    :raises BrokerUnavailable: with :data:`NO_BACKEND` or a backend-specific hint.
    """
    from mqtt_factory_lab.brokers.local import INSTALL_HINT, find_mosquitto

    if requested not in BACKENDS:
        raise BrokerUnavailable(f"unknown broker backend {requested!r}; choose one of {BACKENDS}")
    if url and requested in ("auto", "external"):
        return "external"
    if url:
        raise BrokerUnavailable(
            f"--broker-url {url} asks for an external broker but --broker-backend is {requested!r}: "
            "drop one of them (the backend may also come from $MQTT_LAB_BROKER_BACKEND)"
        )
    if requested == "external":
        raise BrokerUnavailable("--broker-backend=external needs --broker-url mqtt://HOST:PORT")
    if requested == "local":
        if find_mosquitto() is None:
            raise BrokerUnavailable(f"--broker-backend=local needs mosquitto: {INSTALL_HINT}")
        return "local"
    if requested == "docker":
        from mqtt_factory_lab.brokers.docker import docker_available

        answer = docker_available()
        if answer is not True:
            raise BrokerUnavailable(f"--broker-backend=docker needs a Docker engine: {answer}")
        return "docker"
    from mqtt_factory_lab.brokers.docker import docker_available

    if docker_available() is True:
        return "docker"
    if find_mosquitto() is not None:
        return "local"
    raise BrokerUnavailable(NO_BACKEND)


def create_broker(
    backend: str, variant: str = "open", *, url: str | ConnectionSettings | None = None, **options
) -> Broker:
    """A (not yet started) broker of the given concrete backend.

    :param url: for the external backend, ``--broker-url`` or the run's parsed settings
        (credentials, TLS, WebSockets, an MQTT 5 listener).
    """
    if backend == "local":
        from mqtt_factory_lab.brokers.local import LocalMosquitto

        return LocalMosquitto(variant, **options)
    if backend == "docker":
        from mqtt_factory_lab.brokers.docker import DockerMosquitto

        return DockerMosquitto(variant, **options)
    if backend == "external":
        from mqtt_factory_lab.brokers.external import ExternalBroker

        if not url:
            raise BrokerUnavailable("the external backend needs --broker-url mqtt://HOST:PORT")
        return ExternalBroker(url, variant)
    raise BrokerUnavailable(f"unknown broker backend {backend!r}")


__all__ = [
    "BACKENDS",
    "CONFIG",
    "LOG",
    "NO_BACKEND",
    "RESTART",
    "Broker",
    "BrokerError",
    "BrokerStartError",
    "BrokerUnavailable",
    "CapabilityMissing",
    "create_broker",
    "resolve_backend",
]
