"""What a TLS connection to a broker came to, in one sentence: which certificate, which check, what to do.

Python's ``ssl`` reports a failed verification as ``[SSL: CERTIFICATE_VERIFY_FAILED]
certificate verify failed: unable to get local issuer certificate (_ssl.c:1006)``; a
student needs "the broker's certificate is signed by a CA you do not trust". This module
turns the errors of both sides into :class:`TLSOutcome` kinds:

=======================  =================================================================
kind                     what happened
=======================  =================================================================
``accepted``             handshake done, CONNACK 0 (the broker let us in)
``refused``              handshake done, CONNACK with a refusal (an MQTT answer: not TLS)
``unknown_ca``           *we* refused the broker: its certificate is not signed by our CA
``expired``              *we* refused the broker: its certificate is out of its validity
``hostname``             *we* refused the broker: its certificate is for another host
``not_tls``              the listener does not speak TLS (a plaintext port)
``cert_required``        the broker refused *us*: mutual TLS and we sent no certificate
``client_unknown_ca``    the broker refused *us*: our certificate is not signed by its CA
``closed``               the connection ended with no CONNACK and no TLS alert
``unreachable``          nothing listens there
=======================  =================================================================

With TLS 1.3 the broker checks the client's certificate *after* the client finished its
half of the handshake, so its alert arrives at the first read: :func:`probe_tls` therefore
sends a real MQTT CONNECT and reads the answer, which is where that alert shows.
"""

from __future__ import annotations

import socket
import ssl
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

#: kinds where the failure is TLS (never to be reported as "not authorized")
TLS_FAILURES = frozenset(
    {"unknown_ca", "expired", "hostname", "not_tls", "cert_required", "client_unknown_ca"}
)

_VERIFY_CODES = {
    # X509_V_ERR_*: OpenSSL's verification result, as ssl.SSLCertVerificationError.verify_code
    2: "unknown_ca",  # unable to get issuer certificate
    18: "unknown_ca",  # self-signed certificate
    19: "unknown_ca",  # self-signed certificate in chain
    20: "unknown_ca",  # unable to get local issuer certificate
    21: "unknown_ca",  # unable to verify the first certificate
    9: "expired",  # certificate is not yet valid
    10: "expired",  # certificate has expired
    62: "hostname",  # hostname mismatch
    64: "hostname",  # IP address mismatch
}

_ALERTS = {
    "CERTIFICATE_REQUIRED": "cert_required",
    "HANDSHAKE_FAILURE": "cert_required",  # TLS 1.2: no certificate where one is required
    "UNKNOWN_CA": "client_unknown_ca",
    "BAD_CERTIFICATE": "client_unknown_ca",
    "CERTIFICATE_EXPIRED": "client_unknown_ca",
    "WRONG_VERSION_NUMBER": "not_tls",
    "RECORD_LAYER_FAILURE": "not_tls",
    "PACKET_LENGTH_TOO_LONG": "not_tls",
}


def classify_ssl_error(error: BaseException) -> str | None:
    """The kind of a TLS error (:data:`TLS_FAILURES`), or None when it is not one."""
    if isinstance(error, ssl.SSLCertVerificationError):
        kind = _VERIFY_CODES.get(getattr(error, "verify_code", -1))
        if kind:
            return kind
        text = str(error).lower()
        if "expired" in text:
            return "expired"
        if "mismatch" in text:
            return "hostname"
        return "unknown_ca"
    if isinstance(error, ssl.CertificateError):
        return "hostname"
    if isinstance(error, ssl.SSLError):
        text = f"{getattr(error, 'reason', '')} {error}".upper()
        for needle, kind in _ALERTS.items():
            if needle in text:
                return kind
    return None


def explain(kind: str, *, where: str, ca: str | None = None, cert: str | None = None) -> str:
    """One sentence for a TLS failure ``kind``: which certificate, which check, what to do.

    :param where: the broker's address, as the reader knows it.
    :param ca: the CA file the client trusted (``VF_TLS_CA``), for the message.
    :param cert: the client certificate it presented (``VF_TLS_CERT``), if any.
    """
    trusted = f"the CA in {ca}" if ca else "the system's CAs"
    sentences = {
        "unknown_ca": f"the certificate of the broker at {where} is not signed by {trusted} "
        "(TLS verification: unknown CA), so the client refused to connect — it may not be your "
        "broker at all (a man in the middle); give the CA that signed the broker's certificate "
        "(VF_TLS_CA / --broker-ca), never switch verification off",
        "expired": f"the certificate of the broker at {where} is outside its validity period "
        "(TLS verification: certificate expired), so the client refused to connect; the broker "
        "needs a new certificate (and the machine a correct clock)",
        "hostname": f"the certificate of the broker at {where} is valid for another host name "
        "(TLS verification: host name mismatch), so the client refused to connect; connect "
        "with a name the certificate lists, or give the broker a certificate for this one",
        "not_tls": f"the listener at {where} does not speak TLS (a plaintext MQTT port); "
        "use mqtt:// there, or the broker's TLS port",
        "cert_required": f"the broker at {where} requires a client certificate (mutual TLS: "
        "require_certificate) and the client presented none, so the broker ended the "
        "handshake; give the machine its certificate and key (VF_TLS_CERT, VF_TLS_KEY)",
        "client_unknown_ca": f"the broker at {where} refused the client certificate"
        + (f" {cert}" if cert else "")
        + " (mutual TLS: not signed by the CA the broker trusts, its cafile); use a "
        "certificate issued by the factory's CA",
    }
    return sentences.get(kind, f"the TLS connection to {where} failed ({kind})")


@dataclass(frozen=True)
class TLSOutcome:
    """The result of :func:`probe_tls`.

    :ivar kind: see the module's table.
    :ivar detail: the CONNACK code, or the ``ssl`` error's own words (for logs, not students).
    :ivar sentence: one line for a person.
    """

    kind: str
    detail: str
    sentence: str

    @property
    def accepted(self) -> bool:
        return self.kind == "accepted"


def _connect_packet(client_id: str, username: str | None = None) -> bytes:
    """A minimal MQTT 3.1.1 CONNECT (clean session, keepalive 10)."""

    def field(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("!H", len(raw)) + raw

    flags = 0x02 | (0x80 if username else 0)
    body = field("MQTT") + bytes([4, flags]) + struct.pack("!H", 10) + field(client_id)
    if username:
        body += field(username)
    return bytes([0x10, len(body)]) + body


def probe_tls(
    host: str,
    port: int,
    *,
    ca: Path | str | None,
    cert: Path | str | None = None,
    key: Path | str | None = None,
    server_hostname: str | None = None,
    timeout: float = 3.0,
) -> TLSOutcome:
    """Connect with TLS (verifying the broker against ``ca``), send CONNECT, read the answer.

    Never raises for what the broker or the network does: every end is a :class:`TLSOutcome`.
    """
    where = f"{host}:{port}"
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    if cert:
        context.load_cert_chain(str(cert), str(key) if key else None)

    def outcome(kind: str, detail: str) -> TLSOutcome:
        sentence = (
            explain(kind, where=where, ca=str(ca) if ca else None, cert=str(cert) if cert else None)
            if kind in TLS_FAILURES
            else {
                "accepted": f"the broker at {where} accepted the TLS connection and the CONNECT",
                "refused": f"the broker at {where} completed TLS, then refused the CONNECT "
                f"({detail}): an MQTT refusal, not a TLS one",
                "closed": f"the broker at {where} closed the connection without a CONNACK "
                f"({detail})",
                "unreachable": f"nothing answered at {where} ({detail})",
            }[kind]
        )
        return TLSOutcome(kind, detail, sentence)

    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError as error:
        return outcome("unreachable", str(error))
    handshake_done = False
    try:
        with context.wrap_socket(
            raw, server_hostname=server_hostname or host, do_handshake_on_connect=False
        ) as sock:
            sock.settimeout(timeout)
            sock.do_handshake()
            handshake_done = True
            sock.sendall(_connect_packet(f"lab-tls-{uuid.uuid4().hex[:8]}"))
            answer = sock.recv(4)
    except (ssl.SSLError, ssl.CertificateError, OSError) as error:
        detail = f"{type(error).__name__}: {error}"
        kind = classify_ssl_error(error)
        if kind is None and isinstance(error, ssl.SSLEOFError | ConnectionError):
            # A peer that cuts our ClientHello off does not speak TLS; one that hangs up right
            # after a complete handshake, before any CONNACK, rejected our (missing) certificate
            # (Mosquitto under require_certificate closes without an alert).
            if not handshake_done:
                kind = "not_tls"
            else:
                # Mosquitto may close without its alert: what it refused is our certificate
                kind = "cert_required" if cert is None else "client_unknown_ca"
        return outcome(kind or "closed", detail)
    finally:
        raw.close()
    if not answer and handshake_done:
        kind = "cert_required" if cert is None else "client_unknown_ca"
        return outcome(kind, "the broker closed the connection right after the handshake")
    if len(answer) >= 4 and answer[0] == 0x20:
        code = answer[3]
        return (
            outcome("accepted", "CONNACK 0")
            if code == 0
            else outcome("refused", f"CONNACK return code {code}")
        )
    return outcome("closed", "the connection ended" if not answer else f"got {answer!r}")


def files_problem(
    ca: str | None,
    cert: str | None,
    key: str | None,
    *,
    names: tuple[str, str, str] = ("--broker-ca", "--broker-cert", "--broker-key"),
) -> str | None:
    """One sentence when the TLS files cannot be used (which file, which check, what to do),
    else None: the CA must load as PEM certificates, the certificate and key as a pair.

    Checked before any connection, so that a wrong file is named as such and never shows up
    as an ``ssl`` stack trace or a refused handshake.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca:
        try:
            context.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError) as error:
            return (
                f"{names[0]} {ca} cannot be used as the CA certificate ({_reason(error)}): "
                "give the PEM file of the CA that signed the broker's certificate (ca.crt)"
            )
    if cert and key:
        try:
            context.load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as error:
            reason = _reason(error)
            if "KEY_VALUES_MISMATCH" in f"{getattr(error, 'reason', '')} {error}".upper():
                return (
                    f"{names[2]} {key} is not the private key of {names[1]} {cert} (the key "
                    "does not match the certificate): give the key made with that certificate"
                )
            return (
                f"{names[1]} {cert} and {names[2]} {key} cannot be used as a client certificate "
                f"and its key ({reason}): give a PEM certificate and its unencrypted PEM key"
            )
    return None


def _reason(error: BaseException) -> str:
    """OpenSSL's reason without its decoration: "no such file", "key values mismatch"..."""
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, PermissionError):
        return "not readable by this user"
    reason = getattr(error, "reason", None)
    return str(reason or getattr(error, "strerror", None) or error).replace("_", " ").lower()
