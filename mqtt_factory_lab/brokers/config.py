"""Broker configurations: the files in ``docker/`` turned into a runnable broker folder.

Every broker the lab starts, local or in a container, runs the same files:
``docker/mosquitto.conf`` (the base), ``docker/acl`` and one or more
``docker/variants/<name>.conf`` fragments. This module copies them into a
fresh folder laid out like the container's ``/mosquitto`` tree::

    <root>/config/mosquitto.conf      base, listener rewritten to the chosen port
    <root>/config/acl                 copied unchanged
    <root>/config/conf.d/<name>.conf  one file per variant fragment
    <root>/data/                      persistence location (writable by anyone)

The container mounts ``<root>/config`` and ``<root>/data`` at ``/mosquitto/...``;
the local backend instead rewrites the ``/mosquitto/`` prefix to ``<root>/``.
Nothing else in the configuration differs between backends.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from mqtt_factory_lab.brokers.base import BrokerError
from mqtt_factory_lab.brokers.tls import BrokerTLS
from mqtt_factory_lab.brokers.tls import install as install_tls
from mqtt_factory_lab.core.paths import DOCKER_DIR

CONTAINER_ROOT = "/mosquitto"
_LISTENER = re.compile(r"^\s*listener\s+\d+.*$", re.MULTILINE)


class BrokerConfigError(BrokerError, ValueError):
    """A broker variant or configuration file that cannot be used."""


def available_variants(docker_dir: Path = DOCKER_DIR) -> list[str]:
    """Names of the variant fragments shipped in ``docker/variants``."""
    return sorted(p.stem for p in (docker_dir / "variants").glob("*.conf"))


def parse_variant(variant: str, docker_dir: Path = DOCKER_DIR) -> tuple[str, ...]:
    """Split ``"acl+persistent"`` into its fragments, checking each one exists.

    :param variant: one fragment name or several joined with ``+``.
    :raises BrokerConfigError: naming the unknown fragment and the known ones.
    """
    parts = tuple(p.strip() for p in variant.split("+") if p.strip())
    known = available_variants(docker_dir)
    unknown = [p for p in parts if p not in known]
    if not parts or unknown:
        raise BrokerConfigError(
            f"unknown broker variant {variant!r}: {', '.join(unknown) or 'empty name'} "
            f"is not one of {', '.join(known)} (files in {docker_dir / 'variants'})"
        )
    return parts


@dataclass(frozen=True)
class RenderedConfig:
    """A broker folder ready to start.

    :param root: the folder standing for ``/mosquitto``.
    :param variant: the variant name it was built from (``"acl+persistent"``).
    :param port: the port in the listener line.
    """

    root: Path
    variant: str
    port: int

    @property
    def config_dir(self) -> Path:
        return self.root / "config"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def main_file(self) -> Path:
        return self.config_dir / "mosquitto.conf"

    @property
    def files(self) -> dict[str, Path]:
        """Every configuration file in use, by its path relative to ``config/``."""
        return {
            str(p.relative_to(self.config_dir)): p
            for p in sorted(self.config_dir.rglob("*"))
            if p.is_file()
        }

    def text(self) -> str:
        """All configuration files concatenated, each under a ``# ==> name`` header."""
        return "\n".join(f"# ==> {name}\n{p.read_text()}" for name, p in self.files.items())


def render(
    variant: str,
    root: Path,
    *,
    port: int,
    bind_address: str | None = "127.0.0.1",
    local_paths: bool = True,
    docker_dir: Path = DOCKER_DIR,
    extra: str = "",
    source: Path | None = None,
    acl_file: Path | None = None,
    password_file: Path | None = None,
    tls: BrokerTLS | None = None,
) -> RenderedConfig:
    """Build a broker folder for ``variant`` under ``root``.

    :param port: the port of the single listener.
    :param bind_address: the address to listen on, or ``None`` for all
        interfaces (container with port mapping).
    :param local_paths: rewrite ``/mosquitto/`` to ``root`` (local backend);
        ``False`` keeps container paths (docker backend).
    :param extra: configuration lines appended as ``conf.d/zz-extra.conf``,
        for a test that needs one more option.
    :param source: a team's own configuration folder (``--broker-config``) used instead of
        the lab's files and ``variant``: its ``mosquitto.conf`` with the first ``listener``
        line moved to ``port``, and every other file (ACL, password file, certificates)
        copied beside it. Its paths follow the eclipse-mosquitto image's layout
        (``/mosquitto/config/acl``...), as the lab's own files do.
    :param acl_file: an ACL to install as ``config/acl`` instead of ``docker/acl``
        (a solution's own ACL, or a platform team's).
    :param password_file: a ``mosquitto_passwd`` file to install as ``config/passwd``
        (the ``hardened`` variant reads it).
    :param tls: the CA and server certificate of a ``tls``/``mtls`` variant, installed as
        ``config/certs/`` (:mod:`mqtt_factory_lab.brokers.tls`).
    """
    if source is not None:
        return _render_source(
            source, root, port=port, bind_address=bind_address, local_paths=local_paths, extra=extra
        )
    fragments = parse_variant(variant, docker_dir)
    config_dir = root / "config"
    conf_d = config_dir / "conf.d"
    data_dir = root / "data"
    if root.exists():
        shutil.rmtree(config_dir, ignore_errors=True)
    conf_d.mkdir(parents=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    # Mosquitto drops root privileges to the `mosquitto` user, which must be
    # able to write its database here, in the container and locally alike.
    data_dir.chmod(0o777)

    def localise(text: str) -> str:
        return text.replace(f"{CONTAINER_ROOT}/", f"{root}/") if local_paths else text

    base = (docker_dir / "mosquitto.conf").read_text()
    listener = f"listener {port} {bind_address}" if bind_address else f"listener {port}"
    if not _LISTENER.search(base):
        raise BrokerConfigError(f"{docker_dir / 'mosquitto.conf'} has no 'listener' line")
    texts = {name: (docker_dir / "variants" / f"{name}.conf").read_text() for name in fragments}
    # A variant with its own `listener` (tls, mtls) replaces the base's: Mosquitto applies
    # listener options (certfile, require_certificate...) to the listener defined before
    # them *in the same file*, so they must follow a listener line of their own.
    owners = [name for name, text in texts.items() if _LISTENER.search(text)]
    if len(owners) > 1:
        raise BrokerConfigError(
            f"broker variant {variant!r}: {' and '.join(owners)} each define the listener; "
            "combine at most one of them (mtls already includes tls)"
        )
    if owners:
        base = _LISTENER.sub(f"# listener: see conf.d/{owners[0]}.conf", base, count=1)
        texts[owners[0]] = _LISTENER.sub(listener, texts[owners[0]], count=1)
    else:
        base = _LISTENER.sub(listener, base, count=1)
    (config_dir / "mosquitto.conf").write_text(localise(base))
    acl = Path(acl_file) if acl_file is not None else docker_dir / "acl"
    if acl_file is not None and not acl.is_file():
        raise BrokerConfigError(f"the ACL file {acl} does not exist (or is not a file)")
    if acl.exists():
        shutil.copyfile(acl, config_dir / "acl")
    if password_file is not None:
        if not Path(password_file).is_file():
            raise BrokerConfigError(f"the password file {password_file} does not exist")
        shutil.copyfile(password_file, config_dir / "passwd")
    for name, text in texts.items():
        (conf_d / f"{name}.conf").write_text(localise(text))
    if extra:
        (conf_d / "zz-extra.conf").write_text(localise(extra))
    _protect(root, config_dir, data_dir, local_paths)
    if tls is not None:  # after _protect: in a container the key is the mosquitto user's alone
        install_tls(tls, config_dir, container=not local_paths)
    return RenderedConfig(root=root, variant="+".join(fragments), port=port)


def _protect(root: Path, config_dir: Path, data_dir: Path, local: bool) -> None:
    """Who may read the broker's folder.

    Locally the broker runs as the lab's own user: its configuration (a solution's ACL, a
    password file) and its database are that user's alone (0600/0700), out of reach of the
    student programs a grader runs as other users. In a container, Mosquitto reads them as
    its own user (whatever uid the image gives it) through a bind mount: readable by all
    inside the mounted folders, as the image expects, while the folder that holds them is
    ours alone (0700), so no other user of this machine reaches them.
    """
    if local:
        for path in [*config_dir.rglob("*"), config_dir, data_dir, root]:
            path.chmod(0o700 if path.is_dir() else 0o600)
        return
    for path in config_dir.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    config_dir.chmod(0o755)
    root.chmod(0o700)


def _render_source(
    source: Path,
    root: Path,
    *,
    port: int,
    bind_address: str | None,
    local_paths: bool,
    extra: str = "",
) -> RenderedConfig:
    """A team's configuration folder as a broker folder (see :func:`render`)."""
    main = source / "mosquitto.conf"
    if not main.is_file():
        raise BrokerConfigError(
            f"--broker-config {source}: no mosquitto.conf in it (the folder holds the broker's "
            "mosquitto.conf and the files it names: ACL, password file, certificates)"
        )
    config_dir = root / "config"
    data_dir = root / "data"
    if root.exists():
        shutil.rmtree(config_dir, ignore_errors=True)
    shutil.copytree(source, config_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o777)
    text = main.read_text()
    listener = f"listener {port} {bind_address}" if bind_address else f"listener {port}"
    text = (
        _LISTENER.sub(listener, text, count=1) if _LISTENER.search(text) else f"{listener}\n{text}"
    )
    if extra:
        text = f"{text.rstrip()}\n# added by the lab\n{extra}\n"
    if local_paths:
        text = text.replace(f"{CONTAINER_ROOT}/", f"{root}/")
    (config_dir / "mosquitto.conf").write_text(text)
    _protect(root, config_dir, data_dir, local_paths)  # (mosquitto refuses a readable key)
    return RenderedConfig(root=root, variant=f"config from {source}", port=port)
