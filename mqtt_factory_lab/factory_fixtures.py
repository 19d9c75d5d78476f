"""Fixtures that run a solution's factory programs: ``device``, ``factory``, ``observer_capture``.

Loaded by :mod:`mqtt_factory_lab.plugin`, which reads the solution under test from
``--solution PATH`` (default: the lab's reference solution, ``solution.toml``).

``device("press")``            start one device; returns when its ``online`` status is seen
``factory()``                  start every device kind and a controller
``observer_capture()``         a client recording all traffic under the test's topic root
``solution``                   the loaded manifest
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from mqtt_factory_lab.broker_fixtures import BrokerPool, shared_broker
from mqtt_factory_lab.brokers.base import Broker
from mqtt_factory_lab.client import ReceivedMessage, RecordingClient
from mqtt_factory_lab.factory import DEVICE_KINDS, DeviceHandle, FactoryLauncher
from mqtt_factory_lab.roles import RoleError, RoleProcess
from mqtt_factory_lab.schemas import PayloadError, validate_message
from mqtt_factory_lab.solution import ManifestError, Solution

#: the solution under test, loaded once by the plugin's ``pytest_configure``
SOLUTION = pytest.StashKey[Solution]()
#: the launchers a test used, whose programs' output a failure report shows
LAUNCHERS = pytest.StashKey[list[FactoryLauncher]]()


@pytest.fixture(scope="session")
def solution(pytestconfig: pytest.Config) -> Solution:
    """The solution under test (``--solution``), already checked."""
    loaded = pytestconfig.stash.get(SOLUTION, None)
    if loaded is None:
        pytest.fail(
            "no solution to run: the lab's reference solution.toml is not here (is the lab "
            "installed without its checkout?); pass --solution PATH to a solution.toml",
            pytrace=False,
        )
    return loaded


@pytest.fixture
def factory_launcher(
    request: pytest.FixtureRequest,
    broker_pool: BrokerPool,
    solution: Solution,
    topic_root: str,
    lab_seed: int,
) -> Iterator[Callable[..., FactoryLauncher]]:
    """``factory_launcher(broker=None, topic_root=None, protocol="5")``: a launcher whose programs
    all stop when the test ends."""
    launchers: list[FactoryLauncher] = []
    request.node.stash[LAUNCHERS] = launchers

    def make(
        broker: Broker | None = None, root: str | None = None, protocol: str = "5"
    ) -> FactoryLauncher:
        target = broker if broker is not None else shared_broker(request, broker_pool)
        for launcher in launchers:
            if (
                launcher.broker is target
                and launcher.topic_root == (root or topic_root)
                and launcher.protocol == protocol
            ):
                return launcher
        launcher = FactoryLauncher(
            solution,
            target,
            root or topic_root,
            seed=lab_seed,
            time_scale=request.config.getoption("--time-scale"),
            protocol=protocol,
        )
        launchers.append(launcher)
        return launcher

    yield make
    for launcher in launchers:
        launcher.close()


@pytest.fixture
def device(factory_launcher: Callable[..., FactoryLauncher]) -> Callable[..., DeviceHandle]:
    """Start a device of the solution: ``device("press", anomaly=True)``.

    :param kind: a device kind (:data:`~mqtt_factory_lab.factory.DEVICE_KINDS`).
    :param device_id: id in its topics (default ``<kind>-NN``).
    :param client_id: MQTT client id (default: the id plus a random suffix).
    :param anomaly: inject out-of-range values (manifest option ``anomaly``).
    :param crash_after: end abruptly after this many seconds (option ``crash_after``).
    :param broker: another broker than the shared one.
    :param protocol: the MQTT version the program is told to speak (``VF_MQTT_PROTOCOL``).
    Returns once the device's retained ``online`` status is on the broker.
    """

    def start(
        kind: str = "press",
        device_id: str | None = None,
        *,
        broker: Broker | None = None,
        protocol: str = "5",
        **kw: Any,
    ) -> DeviceHandle:
        return or_fail(
            lambda: factory_launcher(broker, protocol=protocol).start_device(kind, device_id, **kw)
        )

    return start


@dataclass
class RunningFactory:
    """A running factory: devices by id and the controller."""

    launcher: FactoryLauncher
    devices: dict[str, DeviceHandle]
    controller: RoleProcess | None = None

    @property
    def topic_root(self) -> str:
        return self.launcher.topic_root


@pytest.fixture
def factory(factory_launcher: Callable[..., FactoryLauncher]) -> Callable[..., RunningFactory]:
    """Start a whole factory: ``factory(kinds=("press", "conveyor"), controller=True)``.

    :param kinds: device kinds to start, one device each (default: all six).
    :param controller: start the controller role too.
    :param controller_session: ``clean`` or ``persistent``.
    :param rules: a controller rule ``SOURCE/SENSOR=TARGET`` (default: the solution's).
    :param anomaly: start the devices with injected anomalies.
    :param protocol: the MQTT version the programs are told to speak.
    """

    def start(
        kinds: Iterable[str] = DEVICE_KINDS,
        *,
        controller: bool = True,
        controller_session: str = "clean",
        controller_id: str | None = None,
        rules: str | None = None,
        anomaly: bool = False,
        broker: Broker | None = None,
        protocol: str = "5",
    ) -> RunningFactory:
        launcher = factory_launcher(broker, protocol=protocol)

        def launch() -> RunningFactory:
            devices = {}
            for kind in kinds:
                handle = launcher.start_device(kind, kind.replace("_", "-"), anomaly=anomaly)
                devices[handle.device_id] = handle
            role = None
            if controller:
                role = launcher.start_role(
                    "controller",
                    controller_id or f"controller-{uuid.uuid4().hex[:8]}",
                    options={"rules": rules},
                    session=controller_session,
                )
            return RunningFactory(launcher, devices, role)

        return or_fail(launch)

    return start


class ObserverCapture(RecordingClient):
    """A client subscribed to everything under a topic root, checking it against the schemas."""

    topic_root: str = "factory"

    def by_kind(self) -> Counter[str]:
        """Message counts per topic kind (telemetry, alarms, state...)."""
        counts: Counter[str] = Counter()
        for message in self.received():
            parts = message.topic[len(self.topic_root) + 1 :].split("/")
            counts[parts[0]] += 1
        return counts

    def invalid(self) -> list[tuple[ReceivedMessage, str]]:
        """Every received message that breaks its schema, with the reason."""
        bad = []
        for message in self.received():
            try:
                validate_message(message.topic, message.payload, root=self.topic_root)
            except PayloadError as error:
                bad.append((message, str(error)))
        return bad

    def assert_all_valid(self) -> int:
        """Assert every message validates against its schema; return how many were checked."""
        bad = self.invalid()
        assert not bad, (
            f"{len(bad)} of {len(self.received())} messages break their JSON Schema:\n"
            + "\n".join(f"  {m.topic}: {reason}" for m, reason in bad[:10])
        )
        return len(self.received())


@pytest.fixture
def observer_capture(
    request: pytest.FixtureRequest, broker_pool: BrokerPool, topic_root: str
) -> Iterator[Callable[..., ObserverCapture]]:
    """``observer_capture(broker=None, root=None)``: record all traffic under the topic root (QoS 1)."""
    captures: list[ObserverCapture] = []

    def make(broker: Broker | None = None, root: str | None = None) -> ObserverCapture:
        target = broker if broker is not None else shared_broker(request, broker_pool)
        capture = ObserverCapture(target.host, target.port, describe_broker=target.health)
        capture.topic_root = root or topic_root
        captures.append(capture)
        capture.connect()
        capture.subscribe(f"{capture.topic_root}/#", qos=1)
        return capture

    yield make
    for capture in captures:
        capture.disconnect()


def or_fail(start: Callable[[], Any]) -> Any:
    """Run ``start``; a solution's missing role or misbehaving program fails the test with its
    message alone (no traceback, no chained "During handling of..." block).

    For lessons that start roles themselves: ``or_fail(lambda: launcher.start_role(...))``.
    """
    try:
        return start()
    except (RoleError, ManifestError) as error:
        message = str(error)
    pytest.fail(message, pytrace=False)
