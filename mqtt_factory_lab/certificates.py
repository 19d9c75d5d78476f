"""``python -m mqtt_factory_lab.certificates DIR [IDENTITY...]``: a folder of lab certificates.

A test CA, the broker's certificate (``server.crt``/``.key``) and one client certificate per
factory identity, in the layout ``sim.run_all --mtls`` and ``mqtt-lab sandbox up --mtls``
read. The certificates themselves are made by :mod:`mqtt_factory_lab.core.certificates`;
this module only knows which identities a factory has (the contract's device kinds).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from mqtt_factory_lab.contract import device_kinds
from mqtt_factory_lab.core.certificates import LabCertificates, export

#: the roles besides the devices that connect with a certificate of their own
ROLES = ("controller", "dashboard", "observer", "datacenter")


def factory_identities() -> list[str]:
    """The identities a factory folder gets by default: every device kind (run_all's device
    ids), the lessons' press-01 and oven-01, and the other roles."""
    return [*device_kinds(), "press-01", "oven-01", *ROLES]


def make_folder(folder: Path, identities: list[str] | None = None) -> list[Path]:
    """Write a fresh certificate folder (a new CA each time) and return the files written."""
    with tempfile.TemporaryDirectory(prefix="mqtt-lab-certs-") as scratch:
        certs = LabCertificates(Path(scratch))
        return export(certs, folder, identities or factory_identities())


def main(argv: list[str] | None = None) -> int:
    """``python -m mqtt_factory_lab.certificates DIR [IDENTITY...]``: a certificate folder."""
    parser = argparse.ArgumentParser(
        prog="python -m mqtt_factory_lab.certificates",
        description="Make a test CA, a broker certificate for 127.0.0.1/localhost and one "
        "client certificate per identity (CN = the identity), as PEM files in DIR. For "
        "testing only: the CA's key is not kept. docs/tls.md does the same with openssl.",
    )
    parser.add_argument("folder", type=Path, metavar="DIR")
    parser.add_argument(
        "identities", nargs="*", metavar="IDENTITY", help="default: every factory identity"
    )
    args = parser.parse_args(argv)
    written = make_folder(args.folder, args.identities)
    print(f"wrote {len(written)} files to {args.folder} (CA: {args.folder / 'ca.crt'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
