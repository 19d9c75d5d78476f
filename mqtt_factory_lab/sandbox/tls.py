"""``sandbox up --mtls [DIR]``: the whole factory under mutual TLS, a certificate per program.

The broker becomes the ``mtls`` variant (TLS only, ``require_certificate``,
``use_identity_as_username``; with ``--acl`` the per-machine ``docker/acl-machines``), and
every program connects with the CA of the folder and a certificate of its own, whose CN
is its identity: a device its kind (``press``...), then ``controller``, ``observer``,
``datacenter``, ``choc-line-a``, ``dashboard``. The folder has the layout
``python -m mqtt_factory_lab.certificates DIR`` writes (``ca.crt``, ``server.crt``/``.key``,
``<identity>.crt``/``.key``); without ``DIR`` the sandbox makes one in its state folder, a
fresh test CA per folder. The sandbox's own clients (``status``, the faults' witness) are
the ``observer``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import paho.mqtt.client as mqtt

from mqtt_factory_lab.sandbox.plan import CHOCOLATE_ID, DATACENTER_ID, DEVICES
from mqtt_factory_lab.sandbox.processes import StartError

#: who the sandbox's own clients (status, the faults' witness) are on a mutual-TLS broker
OBSERVER = "observer"
#: every identity a program of the sandbox presents
IDENTITIES = (*DEVICES, "controller", OBSERVER, DATACENTER_ID, CHOCOLATE_ID, "dashboard")
MAKE_HINT = (
    "make it with `python -m mqtt_factory_lab.certificates {folder}` (or openssl, docs/tls.md)"
)


def env_for(folder: Path | str, identity: str | None) -> dict[str, str]:
    """The ``VF_TLS_*`` variables of a program presenting ``identity``'s certificate
    (``None``: it trusts the folder's CA and presents nothing, like an outsider)."""
    folder = Path(folder)
    env = {"VF_TLS": "1", "VF_TLS_CA": str(folder / "ca.crt")}
    if identity is not None:
        env["VF_TLS_CERT"] = str(folder / f"{identity}.crt")
        env["VF_TLS_KEY"] = str(folder / f"{identity}.key")
    return env


def apply(client: mqtt.Client, folder: Path | str | None, identity: str = OBSERVER) -> None:
    """Make ``client`` verify the broker with the folder's CA and present ``identity``'s
    certificate; nothing when the sandbox runs without ``--mtls`` (``folder`` is None)."""
    if folder is None:
        return
    folder = Path(folder)
    client.tls_set(
        ca_certs=str(folder / "ca.crt"),
        certfile=str(folder / f"{identity}.crt"),
        keyfile=str(folder / f"{identity}.key"),
    )


def prepare(folder: Path, *, make: bool) -> str:
    """Check the certificate folder (or make it, when ``make`` and it lacks files); return
    what was done, in words. Every problem is one :class:`StartError` sentence: which file,
    which check, what to do.
    """
    wanted = ["ca.crt", "server.crt", "server.key"]
    wanted += [f"{who}.{ext}" for who in IDENTITIES for ext in ("crt", "key")]
    missing = [name for name in wanted if not (folder / name).is_file()]
    made = ""
    certificates = ["ca.crt", "server.crt", *(f"{who}.crt" for who in IDENTITIES)]
    if make and (missing or _dates_problem(folder, certificates)):
        # the sandbox's own folder: made again, a fresh CA, whenever it is incomplete or old
        from mqtt_factory_lab.certificates import factory_identities, make_folder

        make_folder(folder, list(dict.fromkeys([*factory_identities(), *IDENTITIES])))
        made = "made "
        missing = []
    if missing:
        raise StartError(
            f"--mtls {folder} lacks {', '.join(missing[:6])}"
            f"{' and more' if len(missing) > 6 else ''}: the sandbox needs the CA, the "
            f"broker's certificate and one per program ({', '.join(IDENTITIES)}); "
            + MAKE_HINT.format(folder=folder)
        )
    problem = _dates_problem(folder, certificates)
    if problem:
        raise StartError(problem)
    return f"{made}{folder} (CA {folder / 'ca.crt'}, a certificate per program)"


def _dates_problem(folder: Path, names: list[str]) -> str | None:
    """One sentence for a certificate that is not a certificate or not valid now, else None."""
    from cryptography import x509

    now = dt.datetime.now(dt.UTC)
    for name in names:
        path = folder / name
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError):
            return (
                f"--mtls: {path} is not a PEM certificate (it does not load as one); "
                + MAKE_HINT.format(folder=folder)
            )
        if cert.not_valid_after_utc < now or cert.not_valid_before_utc > now:
            return (
                f"--mtls: {path} is valid from {cert.not_valid_before_utc:%Y-%m-%d} to "
                f"{cert.not_valid_after_utc:%Y-%m-%d}, not today: every client would refuse it "
                "(TLS verification: certificate expired); " + MAKE_HINT.format(folder=folder)
            )
    return None
