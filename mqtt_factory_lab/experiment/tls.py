"""Lesson 08's instruments: who the broker says connected, and how a refusal is told.

The chapter (``labs/08_tls.py``) holds the concept, the per-machine matrix and the
experiments; this module what they read:

* :func:`identities_logged`, :func:`client_ids_logged` — the broker log's account of each
  connection, with the user name Mosquitto took from the certificate;
* :func:`round_trip`, :func:`probe` — lesson 06's proof of an absence, worded for the
  per-machine ACL, and a payload only one experiment sends;
* :func:`connect_together` — an experiment's TLS clients, connected at once;
* :func:`start_or_fail`, :func:`says_why` — a program that could not come up under mutual
  TLS, read from the broker's log; whether a program's output names the failed check.

The brokers and clients are fixtures of :mod:`mqtt_factory_lab.fixtures.tls`.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from mqtt_factory_lab.brokers import Broker
from mqtt_factory_lab.core.client import RecordingClient
from mqtt_factory_lab.core.roles import RoleError, RoleProcess
from mqtt_factory_lab.core.solution import ManifestError
from mqtt_factory_lab.experiment.acl import round_trip as acl_round_trip

#: the broker log's connection line, with the user name Mosquitto took from the certificate
CONNECTED_AS = re.compile(r"New client connected from \S+ as (\S+) \(.*u'([^']*)'")
#: the same line, with or without a user name
CONNECTED = re.compile(r"New client connected from \S+ as (\S+) ")
#: what Mosquitto logs when it refuses a client's certificate in the handshake → in words
HANDSHAKE_REFUSALS = {
    "peer did not return a certificate": "the broker's log shows a TLS connection that "
    "presented no client certificate (require_certificate refused it)",
    "certificate verify failed": "the broker's log shows a client certificate it could not "
    "verify against its CA (not issued by the factory's CA)",
}
_WHY = re.compile(r"certificate|verif|\bCA\b|TLS|SSL", re.IGNORECASE)


def round_trip(client: RecordingClient) -> None:
    """``client.sync()``: proves that nothing more is on its way to ``client``."""
    __tracebackhide__ = True
    acl_round_trip(client, acl="per-machine ACL")


def connect_together(*clients: RecordingClient) -> None:
    """Connect ``clients`` (made with ``connect=False``) at once: each TLS handshake waits on
    the network, not on the others. Once all have tried, the first error is raised."""
    __tracebackhide__ = True
    waiting = list({id(c): c for c in clients if not c.connected}.values())
    if not waiting:
        return
    with ThreadPoolExecutor(max_workers=len(waiting)) as pool:
        attempts = [pool.submit(client.connect) for client in waiting]
    for attempt in attempts:
        attempt.result()


def probe(who: str, what: str) -> bytes:
    """A payload no other experiment sends: ``tls probe 3f9a…: write … by press-01``."""
    return f"tls probe {uuid.uuid4().hex[:12]}: {what} by {who}".encode()


def identities_logged(broker: Broker, mark: int) -> dict[str, str]:
    """``{client id: user name}`` of the connections logged since ``mark``."""
    return {
        m.group(1): m.group(2)
        for line in broker.log_lines()[mark:]
        if (m := CONNECTED_AS.search(line))
    }


def client_ids_logged(broker: Broker, mark: int) -> set[str]:
    """Client ids of every connection logged since ``mark`` (with or without a user name)."""
    return {m.group(1) for line in broker.log_lines()[mark:] if (m := CONNECTED.search(line))}


def says_why(output: str) -> bool:
    """Whether a program's output names a TLS check (certificate, verification, CA, TLS)."""
    return bool(_WHY.search(output))


def start_or_fail(
    start: Callable[[], RoleProcess | object], who: str, broker: Broker, mark: int
) -> object:
    """``or_fail`` with the lesson's reading of a program that could not come up under mtls:
    the failure quotes, in words, the handshake refusal the broker logged since ``mark``."""
    __tracebackhide__ = True
    try:
        return start()
    except (RoleError, ManifestError) as error:
        log = broker.log_lines()[mark:]
        seen = [
            words for needle, words in HANDSHAKE_REFUSALS.items() if any(needle in x for x in log)
        ]
        evidence = f" Evidence: {seen[0]}." if seen else ""
        message = (
            f"Mutual TLS: {who} did not come up on the mtls broker. It must connect with TLS, "
            "verify the broker with VF_TLS_CA and present its own certificate and key "
            "(VF_TLS_CERT, VF_TLS_KEY: client.tls_set(ca_certs=..., certfile=..., "
            f"keyfile=...)).{evidence}\n{error}"
        )
    pytest.fail(message, pytrace=False)
