"""The ``bridged_brokers`` fixture: a site broker bridged to a cloud broker, for one test.

``bridged_brokers()``                 the lab's bridge (``docker/variants/bridge.conf``)
``bridged_brokers(bridge=path)``      another bridge configuration (a solution's ``[files] bridge``)
``bridged_brokers(text="...")``       a bridge configuration written in the test

Each call starts a :class:`~mqtt_factory_lab.bridge.BrokerPair` and returns it once the bridge
carries a probe out (``factory/lab-probe/...``) and, when it can within :data:`IN_TIMEOUT`, one
in (``sites/<site>/factory/commands/cloud/lab-probe``: a bridge that takes nothing in is left
to the experiments to fail); both brokers stop when the test ends, and a failure report shows
both brokers' logs.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mqtt_factory_lab.bridge import BRIDGE_TEMPLATE, BrokerPair, read_template
from mqtt_factory_lab.broker_fixtures import BrokerPool, broker_or_fail, remember_broker
from mqtt_factory_lab.brokers import BrokerError
from mqtt_factory_lab.client import MQTTTimeout, RecordingClient

#: how long the lab waits for a new bridge to carry its first messages
READY_TIMEOUT = 15.0
#: how long it waits, after that, for its first message in (the bridge's SUBSCRIBE in the cloud)
IN_TIMEOUT = 3.0


def wait_until_bridged(pair: BrokerPair, timeout: float = READY_TIMEOUT) -> float:
    """Wait until a probe crosses the bridge out (and, within IN_TIMEOUT, one in); return seconds.

    Probes are QoS 0 and repeated, so nothing is queued for later experiments to trip on.
    :raises BrokerError: when nothing goes out, with the bridge and the site broker's log.
    """
    token = uuid.uuid4().hex[:8]
    started = time.monotonic()
    deadline = started + timeout
    site = RecordingClient(pair.site.host, pair.site.port, f"lab-probe-site-{token}")
    cloud = RecordingClient(pair.cloud.host, pair.cloud.port, f"lab-probe-cloud-{token}")
    try:
        site.connect()
        cloud.connect()
        cloud.subscribe("#", qos=0)
        site.subscribe("factory/commands/cloud/lab-probe", qos=0)
        for sender, topic, receiver in (
            (site, f"factory/lab-probe/{token}", cloud),  # out: required
            (cloud, f"sites/{pair.site_name}/factory/commands/cloud/lab-probe", site),  # in
        ):
            if receiver is site:
                deadline = min(deadline, time.monotonic() + IN_TIMEOUT)
            while True:
                sender.publish(topic, f"probe {token}", qos=0)
                with contextlib.suppress(MQTTTimeout):
                    receiver.wait_for_message(
                        lambda m: m.payload == f"probe {token}".encode(), timeout=0.25
                    )
                    break
                if time.monotonic() > deadline and receiver is site:
                    break  # nothing comes in: the experiments that need it say why
                if time.monotonic() > deadline:
                    raise BrokerError(
                        f"the bridge never carried a message out (site → cloud) within {timeout:g}s "
                        f"(the lab published on {topic}). Check `address {{cloud_host}}:"
                        "{cloud_port}` and that a `topic factory/# out ...` line is there.\n"
                        f"  the bridge configuration the site ran:\n"
                        + "\n".join("    " + line for line in pair.bridge_config.splitlines())
                        + "\n  the site broker's last lines:\n"
                        + pair.site.tail(12)
                    )
    finally:
        site.disconnect()
        cloud.disconnect()
    return time.monotonic() - started


@pytest.fixture
def bridged_brokers(
    broker_pool: BrokerPool, request: pytest.FixtureRequest
) -> Iterator[Callable[..., BrokerPair]]:
    """Start a site broker bridged to a cloud broker: ``pair = bridged_brokers()``.

    :param bridge: a bridge configuration file (default: ``docker/variants/bridge.conf``),
        with ``{cloud_host}``, ``{cloud_port}`` and ``{site}`` for the lab to fill in.
    :param text: the configuration as text instead of a file.
    :param wait: wait until the bridge carries messages both ways (default True).
    The pair has ``.site`` and ``.cloud`` (brokers) and ``.site_name``.
    """
    pairs: list[BrokerPair] = []
    config = request.config

    def start(bridge: Path | str | None = None, *, text: str | None = None, wait: bool = True):
        backend = broker_pool.backend
        if backend not in ("local", "docker"):
            pytest.skip(
                f"a bridge experiment starts two brokers of its own; the {backend} backend "
                "cannot (use --broker-backend=local or docker)"
            )
        options = {}
        if backend == "docker":
            for option, key in (("--docker-image", "image"), ("--docker-network", "network")):
                if config.getoption(option):
                    options[key] = config.getoption(option)

        def launch() -> BrokerPair:
            template = text if text is not None else read_template(Path(bridge or BRIDGE_TEMPLATE))
            pair = BrokerPair(backend, template, **options)
            pairs.append(pair)
            pair.start()
            return pair

        pair = broker_or_fail(launch)
        for broker in pair.brokers:
            remember_broker(request, broker)
        if wait:
            try:
                wait_until_bridged(pair)
            except BrokerError as error:
                message = str(error)
            else:
                return pair
            pytest.fail(message, pytrace=False)
        return pair

    yield start
    for pair in pairs:
        pair.close()
