"""Two brokers joined by a Mosquitto bridge: the **site** broker and the **cloud** broker.

Pytest-free, like the broker backends (the fixture is :mod:`mqtt_factory_lab.fixtures.bridge`).
The site broker runs a bridge configuration (``docker/variants/bridge.conf``, or a solution's
``[files] bridge``) in which the lab writes the cloud's address:

==================  ==============================================================
placeholder         replaced by
==================  ==============================================================
``{cloud_host}``    the address the *site broker* reaches the cloud at
``{cloud_port}``    its port
``{site}``          the site's name, unique to the pair (``site-3f9a1c``)
==================  ==============================================================

On the local backend both brokers are child processes on 127.0.0.1. On the docker backend
they are two containers: on the default ``bridge`` network mode the pair gets a network of
its own, where the cloud container answers to the alias ``cloud`` on port 1883; in ``host``
mode both listen on 127.0.0.1 as locally.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mqtt_factory_lab.brokers import Broker, BrokerError, create_broker
from mqtt_factory_lab.brokers.config import BrokerConfigError
from mqtt_factory_lab.core.paths import DOCKER_DIR

#: the lab's own bridge configuration (the reference solution's ``[files] bridge``)
BRIDGE_TEMPLATE = DOCKER_DIR / "variants" / "bridge.conf"
PLACEHOLDERS = ("cloud_host", "cloud_port", "site")
#: the cloud container's name on the pair's docker network
CLOUD_ALIAS = "cloud"
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def render_bridge(template: str, *, cloud_host: str, cloud_port: int, site: str) -> str:
    """The bridge configuration with the cloud's address and the site's name written in.

    :raises BrokerConfigError: for a placeholder the lab does not know, or a template
        without a ``connection`` or an ``address`` line.
    """
    unknown = sorted(set(_PLACEHOLDER.findall(template)) - set(PLACEHOLDERS))
    if unknown:
        raise BrokerConfigError(
            f"the bridge configuration uses {', '.join('{' + u + '}' for u in unknown)}, which the "
            f"lab does not fill in; it knows {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
        )
    values = {"cloud_host": cloud_host, "cloud_port": str(cloud_port), "site": site}
    text = _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)
    lines = [line.split("#")[0].split() for line in text.splitlines()]
    keys = {words[0] for words in lines if words}
    missing = [k for k in ("connection", "address") if k not in keys and k + "es" not in keys]
    if missing:
        raise BrokerConfigError(
            f"the bridge configuration has no `{'` or `'.join(missing)}` line: a Mosquitto bridge "
            "starts with `connection NAME` followed by `address {cloud_host}:{cloud_port}`"
        )
    return text


class BrokerPair:
    """A cloud broker and a site broker whose bridge connects to it.

    :param backend: ``"local"`` or ``"docker"``.
    :param template: the bridge configuration, with :data:`PLACEHOLDERS`.
    :param site: the site's name (default: ``site-<6 hex>``).
    :param cloud_variant: the cloud's variant; ``persistent`` keeps its subscribers'
        sessions when it goes away and comes back.
    :param options: backend options (``image``, ``network`` for docker).

    Example::

        with BrokerPair("local", BRIDGE_TEMPLATE.read_text()) as pair:
            print(pair.site.url, "->", pair.cloud.url)
    """

    def __init__(
        self,
        backend: str,
        template: str,
        *,
        site: str | None = None,
        cloud_variant: str = "persistent",
        site_variant: str = "open",
        **options: Any,
    ) -> None:
        if backend not in ("local", "docker"):
            raise BrokerError(
                f"a bridged pair needs two brokers the lab starts (local or docker), not {backend!r}"
            )
        self.backend = backend
        self.template = template
        self.site_name = site or f"site-{uuid.uuid4().hex[:6]}"
        self._options = options
        self._network: Any = None
        self.cloud: Broker = self._make(cloud_variant, alias=CLOUD_ALIAS)
        self.site: Broker = self._make(site_variant, alias="site")
        self.cloud.role, self.site.role = "cloud", "site"
        self.bridge_config = ""

    def _make(self, variant: str, *, alias: str, **extra: Any) -> Broker:
        if self.backend == "docker":
            return docker_on_network(variant, pair=self, alias=alias, **self._options, **extra)
        return create_broker("local", variant, **self._options, **extra)

    @property
    def brokers(self) -> tuple[Broker, Broker]:
        return (self.site, self.cloud)

    def cloud_address(self) -> tuple[str, int]:
        """Where the site broker reaches the cloud (not where the lab's clients do)."""
        if self.backend == "docker" and self._uses_network():
            return CLOUD_ALIAS, 1883
        return "127.0.0.1", self.cloud.port

    def _uses_network(self) -> bool:
        return getattr(self.cloud, "network", "host") != "host"

    def network(self) -> Any:
        """The pair's docker network, created at the first need (docker bridge mode only)."""
        if self._network is None:
            from testcontainers.core.network import Network

            from mqtt_factory_lab.brokers.docker import LABEL, PID_LABEL

            labels = {LABEL: "1", PID_LABEL: str(os.getpid())}
            self._network = Network(docker_network_kw={"labels": labels}).create()
        return self._network

    def start(self) -> BrokerPair:
        """Start the cloud, write its address into the bridge, start the site."""
        self.cloud.start()
        host, port = self.cloud_address()
        self.bridge_config = render_bridge(
            self.template, cloud_host=host, cloud_port=port, site=self.site_name
        )
        self.site.extra_config = self.bridge_config  # type: ignore[attr-defined]
        self.site.start()
        return self

    def close(self) -> None:
        """Stop both brokers (at once) and remove what they used (and the docker network).

        Safe twice.
        """

        close_brokers(self.brokers)
        if self._network is not None:
            with contextlib.suppress(Exception):
                self._network.remove()
            self._network = None

    def __enter__(self) -> BrokerPair:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


def close_brokers(brokers: tuple[Broker, ...] | list[Broker]) -> None:
    """Close ``brokers`` at once (a local broker stops in a few ms, see
    :func:`~mqtt_factory_lab.brokers.local.wake_to_stop`; a container in the engine's time)."""

    def close(broker: Broker) -> None:
        with contextlib.suppress(Exception):
            broker.close()

    with ThreadPoolExecutor(max_workers=max(1, len(brokers))) as pool:
        list(pool.map(close, brokers))


def docker_on_network(variant: str, *, pair: BrokerPair, alias: str, **options: Any) -> Broker:
    """A :class:`~mqtt_factory_lab.brokers.docker.DockerMosquitto` that joins its pair's docker
    network under ``alias`` (in ``bridge`` network mode; ``host`` mode needs no network).

    The docker backend is imported here, so the local backend never imports testcontainers.
    """
    from mqtt_factory_lab.brokers.docker import DockerMosquitto

    class OnPairNetwork(DockerMosquitto):
        def _build(self, docker_container: Any) -> Any:
            container = super()._build(docker_container)
            if self.network != "host":
                container.with_network(pair.network()).with_network_aliases(alias)
            return container

    return OnPairNetwork(variant, **options)


def read_template(path: Path) -> str:
    """The bridge configuration file's text. :raises BrokerConfigError: when unreadable."""
    try:
        return Path(path).read_text()
    except OSError as error:
        raise BrokerConfigError(f"cannot read the bridge configuration {path}: {error}") from error
