"""Fixtures for identity and encryption (lesson 08): certificates, TLS clients, machines with certificates.

``lab_certificates``       the run's CA and the certificates it issues (:class:`LabCertificates`)
``tls_client``             ``tls_client("press-01", broker=b)``: a connected client presenting
                           press-01's certificate (or none), trusting the run's CA (or another)
``machine_launcher``       ``machine_launcher(broker)``: a :class:`FactoryLauncher` that gives
                           every program of the solution its own ``VF_TLS_CA/CERT/KEY``

The brokers come from ``make_broker("mtls+acl", acl_file=...)`` or the ``broker_pool``: a
``tls``/``mtls`` broker installs the same run's CA, so every certificate handed out here is
trusted by it (and one from ``lab_certificates.other_ca()`` is not).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mqtt_factory_lab.broker_fixtures import remember_broker
from mqtt_factory_lab.brokers.base import Broker
from mqtt_factory_lab.certificates import KeyPair, LabCertificates, run_certificates
from mqtt_factory_lab.client import RecordingClient
from mqtt_factory_lab.connection import ConnectionSettings
from mqtt_factory_lab.factory import FactoryLauncher
from mqtt_factory_lab.factory_fixtures import LAUNCHERS
from mqtt_factory_lab.solution import Solution

#: the certificate identity of each non-device role (a device's is its device id)
ROLE_IDENTITIES = {
    "controller": "controller",
    "observer": "observer",
    "datacenter": "datacenter",
    "dashboard": "dashboard",
}


def identity_of(role: str, values: dict[str, Any]) -> str:
    """Whose certificate a program presents: a device its device id, a role its name."""
    if role == "device":
        return str(values.get("device_id") or values["client_id"])
    return ROLE_IDENTITIES.get(role, str(values.get("client_id", role)))


def tls_settings(
    broker: Broker,
    pair: KeyPair | None,
    *,
    trust: Path | None = None,
    certificates: LabCertificates | None = None,
) -> ConnectionSettings:
    """TLS settings to ``broker``: trusting ``trust`` (default the run's CA), presenting ``pair``."""
    certificates = certificates or run_certificates()
    return ConnectionSettings(
        broker.host,
        broker.port,
        tls=True,
        ca=str(trust or certificates.ca_file),
        cert=str(pair.cert) if pair else None,
        key=str(pair.key) if pair else None,
    )


def program_user() -> tuple[int | None, int | None]:
    """The user and group the class grader runs a solution's programs as, or ``(None, None)``."""
    from mqtt_factory_lab.grading.limits import Limits

    limits = Limits.from_env()
    if limits is None or limits.uid is None or os.geteuid() != 0:
        return None, None
    return limits.uid, limits.gid


@pytest.fixture(scope="session")
def lab_certificates() -> LabCertificates:
    """The run's certificate authority: ``lab_certificates.client("press-01")``, ``.server()``,
    ``.expired_server()``, ``.wrong_host_server()``, ``.other_ca()``. Made once per process
    (each xdist worker has its own), in a private temporary folder removed at exit."""
    return run_certificates()


@pytest.fixture
def tls_client(
    request: pytest.FixtureRequest, lab_certificates: LabCertificates
) -> Iterator[Callable[..., RecordingClient]]:
    """Make TLS clients: ``tls_client("press-01", broker=b, client_id="press-01")``.

    :param identity: whose certificate to present (``None``: no client certificate).
    :param broker: the ``tls``/``mtls`` broker (required).
    :param client_id: default: the identity plus a random suffix.
    :param protocol: ``"5"`` (default) or ``"3.1.1"``.
    :param trust: the CA file to verify the broker with (default: the run's CA).
    :param issuer: the CA that issues the certificate (default: the run's; ``other_ca()``
        makes an impostor's).
    :param username: a user name to claim in the CONNECT.
    :param connect: connect now (default True).
    Every client is disconnected when the test ends.
    """
    clients: list[RecordingClient] = []

    def make(
        identity: str | None = None,
        *,
        broker: Broker,
        client_id: str | None = None,
        protocol: str = "5",
        trust: Path | None = None,
        issuer: LabCertificates | None = None,
        username: str | None = None,
        connect: bool = True,
    ) -> RecordingClient:
        remember_broker(request, broker)
        pair = (issuer or lab_certificates).client(identity) if identity else None
        settings = tls_settings(broker, pair, trust=trust, certificates=lab_certificates)
        name = client_id or re.sub(r"[^A-Za-z0-9_-]", "-", f"{identity or 'anon'}")
        client = RecordingClient(
            settings.host,
            settings.port,
            client_id or f"{name}-{uuid.uuid4().hex[:6]}",
            protocol=protocol,
            username=username,
            describe_broker=broker.health,
            connection=settings,
        )
        clients.append(client)
        if connect:
            client.connect()
        return client

    yield make
    for client in clients:
        client.disconnect()


@pytest.fixture
def machine_launcher(
    request: pytest.FixtureRequest,
    solution: Solution,
    lab_seed: int,
    lab_certificates: LabCertificates,
) -> Iterator[Callable[..., FactoryLauncher]]:
    """``machine_launcher(broker, root="factory", protocol="5", trust=None)``: start the
    solution's programs, each with its own certificate.

    A device presents the certificate of its device id, the controller ``controller``'s, the
    data center ``datacenter``'s (:data:`ROLE_IDENTITIES`); every program gets ``VF_TLS_CA``
    (``trust``, default the run's CA), ``VF_TLS_CERT`` and ``VF_TLS_KEY``. Programs stop
    when the test ends, and a failure report shows what they printed.
    """
    launchers: list[FactoryLauncher] = request.node.stash.setdefault(LAUNCHERS, [])
    mine: list[FactoryLauncher] = []

    def make(
        broker: Broker, root: str = "factory", protocol: str = "5", trust: Path | None = None
    ) -> FactoryLauncher:
        remember_broker(request, broker)

        def env_for(role: str, values: dict[str, Any]) -> dict[str, str]:
            # Under the class grader (as root) the programs run as another user, who must
            # read its own key and nothing else: a hand-out copy (LabCertificates.handout).
            pair = lab_certificates.handout(identity_of(role, values), *program_user())
            return pair.env(trust)

        launcher = FactoryLauncher(
            solution,
            broker,
            root,
            seed=lab_seed,
            time_scale=request.config.getoption("--time-scale"),
            protocol=protocol,
            env_for=env_for,
        )
        launchers.append(launcher)
        mine.append(launcher)
        return launcher

    yield make
    for launcher in mine:
        launcher.close()
