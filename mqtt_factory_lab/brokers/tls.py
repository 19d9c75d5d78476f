"""The certificates of a broker of the ``tls`` or ``mtls`` variant, and how the lab reaches it.

:func:`broker_tls` is what a backend asks when it is given a variant: ``None`` for a
plaintext broker, else a :class:`BrokerTLS` holding the CA and the server certificate
(by default the run's, :func:`~mqtt_factory_lab.core.certificates.run_certificates`).
:func:`install` copies them into the rendered configuration as ``config/certs/``, which
the variant files name as ``/mosquitto/config/certs/...``:

* locally the key stays ``0600`` (the broker runs as its owner);
* in a container the broker reads it as the image's ``mosquitto`` user after dropping
  root, from a read-only bind mount: readable (``0644``) inside the mounted folder, whose
  parent folder is ours alone (``0700``).
"""

from __future__ import annotations

import shutil
import ssl
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from mqtt_factory_lab.core.certificates import KeyPair, LabCertificates, run_certificates
from mqtt_factory_lab.core.connection import ConnectionSettings

#: the variant fragments that turn the listener into a TLS one
TLS_FRAGMENTS = frozenset({"tls", "mtls"})
#: who the lab's own clients are on a mutual-TLS broker unless they say otherwise: the
#: observer reads the plant and writes nothing (docker/acl-machines)
LAB_IDENTITY = "observer"


@dataclass(frozen=True)
class BrokerTLS:
    """What a TLS broker serves and what the lab's clients need to reach it.

    :ivar certificates: the CA (and issuer of client certificates).
    :ivar server: the broker's certificate and key.
    :ivar mutual: whether clients must present a certificate (``mtls``).
    """

    certificates: LabCertificates
    server: KeyPair
    mutual: bool

    def settings(self, host: str, port: int, identity: str = LAB_IDENTITY) -> ConnectionSettings:
        """TLS settings trusting the CA; under ``mtls``, presenting ``identity``'s certificate."""
        pair = self.certificates.client(identity) if self.mutual else None
        return ConnectionSettings(
            host,
            port,
            tls=True,
            ca=str(self.certificates.ca_file),
            cert=str(pair.cert) if pair else None,
            key=str(pair.key) if pair else None,
        )

    def ping(self, host: str, port: int, timeout: float = 1.0) -> bool:
        """Whether an MQTT broker answers a TLS CONNECT at ``host:port`` (:func:`tls_ping`)."""
        pair = self.certificates.client(LAB_IDENTITY) if self.mutual else None
        return tls_ping(
            host, port, pair.cert if pair else None, pair.key if pair else None, timeout
        )


def tls_ping(
    host: str, port: int, cert: Path | None = None, key: Path | None = None, timeout: float = 1.0
) -> bool:
    """Whether an MQTT broker answers a TLS CONNECT at ``host:port`` (readiness only).

    It does not verify the server's certificate: the experiments may give the broker an
    expired or wrong-host one on purpose, and the question here is only "is it up?". A
    mutual-TLS broker needs ``cert`` and ``key``.
    """
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"lab-ping-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv311,
        reconnect_on_failure=False,
    )
    client.tls_set(
        cert_reqs=ssl.CERT_NONE,
        certfile=str(cert) if cert else None,
        keyfile=str(key) if key else None,
    )
    client.tls_insecure_set(True)
    client.connect_timeout = timeout
    answered = threading.Event()
    client.on_connect = lambda *args: answered.set()
    try:
        client.connect(host, port, keepalive=10)
    except (OSError, ValueError):
        return False
    client.loop_start()
    try:
        return answered.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()


def broker_tls(
    fragments: tuple[str, ...],
    certificates: LabCertificates | None = None,
    server: KeyPair | None = None,
) -> BrokerTLS | None:
    """The TLS material of a broker made of ``fragments``, or None when it is plaintext."""
    if not TLS_FRAGMENTS & set(fragments):
        return None
    certificates = certificates or run_certificates()
    return BrokerTLS(certificates, server or certificates.server(), "mtls" in fragments)


def install(tls: BrokerTLS, config_dir: Path, *, container: bool) -> None:
    """Copy the CA and the server certificate into ``config_dir/certs`` (see the module)."""
    install_files(tls.certificates.ca_file, tls.server, config_dir, container=container)


def install_files(ca: Path, server: KeyPair, config_dir: Path, *, container: bool) -> None:
    """Copy ``ca`` (the CA clients' certificates must come from) and the broker's certificate
    and key into ``config_dir/certs/``, where the ``tls``/``mtls`` variants read them.

    The key stays ``0600``; for a container it becomes the image's ``mosquitto`` user's
    (as root), or readable (``0644``, in a folder that is ours) when we cannot chown.
    """
    folder = config_dir / "certs"
    folder.mkdir(exist_ok=True)
    shutil.copyfile(ca, folder / "ca.crt")
    shutil.copyfile(server.cert, folder / "server.crt")
    key = folder / "server.key"
    key.touch(mode=0o600)
    key.chmod(0o600)
    key.write_bytes(server.key.read_bytes())
    for name in ("ca.crt", "server.crt"):
        (folder / name).chmod(0o644)
    folder.chmod(0o755)
    if container:
        # The container's mosquitto user must read it, and its uid depends on the image (1883
        # in eclipse-mosquitto, the host's in the offline CI image): readable inside the
        # mounted folder, whose parent is ours alone (brokers.config._protect).
        key.chmod(0o644)
