"""Certificates made for one run: a test CA, the broker's certificate, one per machine.

Nothing here is ever committed: :class:`LabCertificates` makes a fresh certificate
authority with ``trustme`` (ECDSA keys, the library's sensible extensions) and writes
PEM files into a private folder, keys mode ``0600``::

    certs = LabCertificates.create(Path("/tmp/certs"))
    certs.ca_file                       # the CA every lab client and broker trusts
    certs.server()                      # 127.0.0.1 and localhost, for the broker
    certs.client("press-01")            # CN=press-01: the machine's identity
    certs.expired_server()              # valid last month, not today
    certs.wrong_host_server()           # for broker.example, not 127.0.0.1
    certs.other_ca().server()           # a man in the middle's: signed by another CA

``docs/tls.md`` makes the same files with ``openssl``. Lesson 08 gets them from the
``lab_certificates`` fixture; a broker of the ``tls`` or ``mtls`` variant gets its
server certificate from :func:`run_certificates` unless it is given one.
"""

from __future__ import annotations

import atexit
import datetime as dt
import os
import shutil
import ssl
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # trustme and cryptography load at the first certificate: every pytest
    import trustme  # run imports this module, few of them make certificates

#: the names the broker's certificate is valid for: what lab clients connect to
SERVER_HOSTS = ("127.0.0.1", "localhost")
#: the name on the certificate of a broker that claims to be somewhere else
WRONG_HOST = "broker.example"


@dataclass(frozen=True)
class KeyPair:
    """One certificate and its private key, as PEM files, and the CA file that trusts it.

    :ivar name: what it is for, in messages ("the certificate of press-01").
    :ivar cert: the certificate (PEM).
    :ivar key: its private key (PEM, mode 0600).
    :ivar ca: the CA certificate that signed it.
    """

    name: str
    cert: Path
    key: Path
    ca: Path

    @property
    def identity(self) -> str:
        """The certificate's Common Name: the user name under ``use_identity_as_username``."""
        return common_name(self.cert)

    def env(self, trust: Path | None = None) -> dict[str, str]:
        """The ``VF_TLS_*`` variables of a program that presents this certificate."""
        return {
            "VF_TLS": "1",
            "VF_TLS_CA": str(trust or self.ca),
            "VF_TLS_CERT": str(self.cert),
            "VF_TLS_KEY": str(self.key),
        }


def common_name(cert: Path) -> str:
    """The subject CN of a PEM certificate file ("" when it has none)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    names = loaded.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def not_after(cert: Path) -> dt.datetime:
    """When a PEM certificate expires (UTC)."""
    from cryptography import x509

    return x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc


class LabCertificates:
    """A certificate authority for one run, and the certificates it issues.

    :param folder: where the PEM files go (made private: mode 0700).
    :param name: the CA's organisation name (shows in ``openssl x509 -text``).
    """

    def __init__(self, folder: Path, name: str = "mqtt-factory-lab test CA") -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o700)
        self.name = name
        import trustme

        self._ca: trustme.CA = trustme.CA(organization_name=name)
        self.ca_file = self.folder / "ca.crt"
        self._ca.cert_pem.write_to_path(str(self.ca_file))
        self._issued: dict[str, KeyPair] = {}
        self._lock = threading.Lock()
        self._other: LabCertificates | None = None

    @classmethod
    def create(cls, folder: Path | None = None) -> LabCertificates:
        """A new CA in ``folder`` (default: a fresh temporary folder)."""
        return cls(folder or Path(tempfile.mkdtemp(prefix="mqtt-lab-certs-")))

    # -- issuing --------------------------------------------------------------------
    def _issue(
        self,
        stem: str,
        name: str,
        *identities: str,
        common: str | None = None,
        valid: tuple[dt.datetime, dt.datetime] | None = None,
    ) -> KeyPair:
        with self._lock:
            found = self._issued.get(stem)
            if found is not None:
                return found
            before, after = valid or (None, None)
            leaf = self._ca.issue_cert(
                *identities,
                common_name=common,
                organization_name=self.name,
                not_before=before,
                not_after=after,
            )
            cert, key = self.folder / f"{stem}.crt", self.folder / f"{stem}.key"
            leaf.cert_chain_pems[0].write_to_path(str(cert))
            key.touch(mode=0o600)
            key.chmod(0o600)
            leaf.private_key_pem.write_to_path(str(key))
            cert.chmod(0o644)
            pair = self._issued[stem] = KeyPair(name, cert, key, self.ca_file)
            return pair

    def server(self) -> KeyPair:
        """The broker's certificate: valid for 127.0.0.1 and localhost, signed by this CA."""
        return self._issue(
            "server", "the broker's certificate", *SERVER_HOSTS, common=SERVER_HOSTS[0]
        )

    def client(self, identity: str) -> KeyPair:
        """A machine's certificate: ``CN=<identity>``, for client authentication."""
        if not identity or "/" in identity or identity.startswith("."):
            raise ValueError(
                f"a certificate identity is a plain name such as press-01, not {identity!r}"
            )
        return self._issue(f"client-{identity}", f"the certificate of {identity}", common=identity)

    def expired_server(self) -> KeyPair:
        """A broker certificate that expired yesterday (it was valid for a month before)."""
        now = dt.datetime.now(dt.UTC)
        return self._issue(
            "server-expired",
            "the broker's expired certificate",
            *SERVER_HOSTS,
            common=SERVER_HOSTS[0],
            valid=(now - dt.timedelta(days=31), now - dt.timedelta(days=1)),
        )

    def wrong_host_server(self) -> KeyPair:
        """A broker certificate signed by this CA, but for :data:`WRONG_HOST` only."""
        return self._issue(
            "server-wrong-host", "a certificate for another host", WRONG_HOST, common=WRONG_HOST
        )

    def other_ca(self) -> LabCertificates:
        """Another, unrelated CA: what a man in the middle (or a misconfigured broker) has."""
        with self._lock:
            if self._other is None:
                self._other = LabCertificates(self.folder / "other-ca", "an unrelated CA")
            return self._other

    def handout(self, identity: str, uid: int | None = None, gid: int | None = None) -> KeyPair:
        """``identity``'s certificate for a program that runs as another user (``uid``).

        The class grader runs a student's programs as an unprivileged user when it is root:
        that user gets a folder of its own holding its certificate, its key (``0600``, its
        own) and the CA, and can reach nothing else here (the CA folder becomes ``0711``:
        passable, not listable; every other key stays ``0600`` and not its own). Without a
        ``uid`` the program runs as us and gets the certificate as it is.
        """
        pair = self.client(identity)
        if uid is None:
            return pair
        self.folder.chmod(0o711)
        folder = Path(tempfile.mkdtemp(prefix=f"handout-{identity}-", dir=self.folder))
        copies = {name: folder / name for name in ("ca.crt", "client.crt", "client.key")}
        for source, target in zip(
            (self.ca_file, pair.cert, pair.key), copies.values(), strict=True
        ):
            shutil.copyfile(source, target)
            os.chown(target, uid, uid if gid is None else gid)
        copies["client.key"].chmod(0o600)
        os.chown(folder, uid, uid if gid is None else gid)
        folder.chmod(0o700)
        return KeyPair(pair.name, copies["client.crt"], copies["client.key"], copies["ca.crt"])

    def client_context(self, pair: KeyPair | None = None) -> ssl.SSLContext:
        """An ``ssl`` context that trusts this CA (and presents ``pair``, if given)."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if pair is not None:
            context.load_cert_chain(str(pair.cert), str(pair.key))
        return context

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


_RUN: LabCertificates | None = None
_RUN_LOCK = threading.Lock()


def run_certificates() -> LabCertificates:
    """This process's CA, made at the first need and removed at exit.

    Brokers of the ``tls``/``mtls`` variants and the ``lab_certificates`` fixture share it,
    so that a client certificate from the fixture is trusted by every broker of the run.
    Each pytest-xdist worker is its own process, with its own CA and its own brokers.
    """
    global _RUN
    with _RUN_LOCK:
        if _RUN is None:
            _RUN = LabCertificates.create()
            atexit.register(_RUN.remove)
        return _RUN


def export(certs: LabCertificates, folder: Path, identities: list[str]) -> list[Path]:
    """Write ``folder/ca.crt``, ``server.crt``/``.key`` and ``<identity>.crt``/``.key``.

    The layout ``sim.run_all --mtls``, ``mqtt-lab sandbox up --mtls`` and ``docs/tls.md`` use.
    Keys are mode 0600.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "ca.crt"]
    shutil.copyfile(certs.ca_file, written[0])
    pairs = {"server": certs.server(), **{name: certs.client(name) for name in identities}}
    for name, pair in pairs.items():
        cert, key = folder / f"{name}.crt", folder / f"{name}.key"
        shutil.copyfile(pair.cert, cert)
        key.touch(mode=0o600)
        key.chmod(0o600)
        key.write_bytes(pair.key.read_bytes())
        written += [cert, key]
    return written
