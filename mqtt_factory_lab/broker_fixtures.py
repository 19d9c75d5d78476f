"""Fixtures that give a test brokers and MQTT clients.

``broker``           the shared broker of the ``open`` variant (per worker)
``make_broker``      ``make_broker("acl+persistent")``: a dedicated broker for one test
``mqtt_client``      ``mqtt_client(protocol="3.1.1")``: connected :class:`RecordingClient` s
``topic_root``       a topic root no other test uses, such as ``lab/3f9a1c2b/factory``
``protocol``         each MQTT version in turn: a test that asks for it runs twice
``broker_env``       ``broker_env()``: the ``VF_*`` environment a factory program needs
``lab_seed``         the run's random seed (``--lab-seed``)
``broker_pool``      every broker of this pytest process (session scope)
``broker_capabilities``  what the shared broker can do (:mod:`mqtt_factory_lab.capabilities`)
``behaviour``        ``behaviour.observe(...)``: what a broker chose where the specifications
                     let it (``@pytest.mark.rule("may")`` experiments)

An experiment that needs an optional feature says so with ``@pytest.mark.needs("mqtt5")``;
the ``protocol`` fixture's MQTT 5 run and ``mqtt_client(protocol="5")`` need ``mqtt5`` by
themselves. On a broker without it the experiment is skipped, with the probe's reason.

The brokers themselves (:mod:`mqtt_factory_lab.brokers`) know nothing of pytest;
these fixtures only choose, start, share and stop them.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mqtt_factory_lab.brokers import (
    RESTART,
    Broker,
    BrokerError,
    BrokerUnavailable,
    create_broker,
    resolve_backend,
)
from mqtt_factory_lab.capabilities import CAPABILITIES, BrokerNotReady, Capabilities, probe
from mqtt_factory_lab.client import RecordingClient
from mqtt_factory_lab.connection import PROTOCOLS, ConnectionSettings
from mqtt_factory_lab.factory import Address, program_env

#: the brokers a test used, with the log position at which it started using each
BROKERS_USED = pytest.StashKey[list[tuple[Broker, int]]]()
#: the run's ``--broker-url`` settings, parsed once (None: the lab starts its own brokers)
CONNECTION = pytest.StashKey[ConnectionSettings | None]()
#: what the shared broker can do, probed once per process (or handed down by xdist's controller)
CAPABILITIES_KEY = pytest.StashKey[Capabilities]()
#: why the probe could not even connect (reported once, then every test fails fast with it)
NOT_READY_KEY = pytest.StashKey[str]()


class BrokerPool:
    """Starts brokers for one pytest process and stops every one of them at the end.

    Shared brokers are kept per variant; dedicated ones belong to one test.
    """

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self._backend: str | None = None
        self._unavailable: BrokerUnavailable | None = None
        self._shared: dict[str, Broker] = {}
        self._all: list[Broker] = []

    @property
    def backend(self) -> str:
        """The concrete backend; decided once per process (a missing one is reported once too)."""
        if self._unavailable is not None:
            raise self._unavailable
        if self._backend is None:
            try:
                self._backend = resolve_backend(
                    self.config.getoption("--broker-backend"), self.config.getoption("--broker-url")
                )
            except BrokerUnavailable as error:
                self._unavailable = error
                raise
        return self._backend

    def _options(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.backend == "docker":
            if self.config.getoption("--docker-image"):
                options["image"] = self.config.getoption("--docker-image")
            if self.config.getoption("--docker-network"):
                options["network"] = self.config.getoption("--docker-network")
        return options

    def start(self, variant: str = "open", **options: Any) -> Broker:
        """Start a dedicated broker (closed by :meth:`release` or :meth:`close`)."""
        broker = create_broker(
            self.backend,
            variant,
            url=self.config.stash.get(CONNECTION, None),
            **self._options(),
            **options,
        )
        self._all.append(broker)
        try:
            broker.start()
        except BaseException:
            broker.close()
            raise
        return broker

    def shared(self, variant: str = "open") -> Broker:
        """The broker of this variant that tests share; started (again) when needed."""
        broker = self._shared.get(variant)
        if broker is None:
            broker = self._shared[variant] = self.start(variant)
        elif not broker.is_running() and RESTART in broker.capabilities:
            broker.start()  # a previous test stopped or killed it
        return broker

    def release(self, broker: Broker) -> None:
        broker.close()
        if broker in self._all:
            self._all.remove(broker)

    def close(self) -> None:
        while self._all:
            self._all.pop().close()
        self._shared.clear()


def broker_or_fail(start: Callable[[], Broker]) -> Broker:
    """Start a broker, turning a harness error into one clean failure message.

    For fixtures of other scopes that start their own brokers from the pool
    (``broker_or_fail(lambda: broker_pool.start("acl"))``).
    """
    try:
        return start()
    except BrokerUnavailable as error:
        message = str(error)
    except BrokerError as error:
        message = f"the broker could not start:\n{error}"
    # Outside the except block, so the report shows the advice once, without a chained traceback.
    pytest.fail(message, pytrace=False)


def remember_broker(request: pytest.FixtureRequest, broker: Broker) -> Broker:
    """Note that the test uses ``broker``, so that a failure report shows its log from here on."""
    node = request.node
    if any(used is broker for used, _ in node.stash.get(BROKERS_USED, [])):
        return broker
    try:
        mark = broker.log_mark()
    except BrokerError:
        mark = 0
    node.stash[BROKERS_USED] = [*node.stash.get(BROKERS_USED, []), (broker, mark)]
    return broker


def shared_broker(request: pytest.FixtureRequest, pool: BrokerPool) -> Broker:
    """The shared ``open`` broker, for fixtures whose callers may pass another one.

    Fixtures take it from the session's pool (not ``request.getfixturevalue("broker")``),
    so that teardown order stays the order of their signatures.
    """
    return remember_broker(request, broker_or_fail(lambda: pool.shared("open")))


@pytest.fixture(scope="session")
def broker_pool(pytestconfig: pytest.Config) -> Iterator[BrokerPool]:
    """Every broker this pytest process starts; all are stopped at the end of the session."""
    pool = BrokerPool(pytestconfig)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def broker(broker_pool: BrokerPool, request: pytest.FixtureRequest) -> Broker:
    """A running broker of the ``open`` variant, shared by the tests of this worker.

    Tests on it must isolate themselves (``topic_root``, unique client ids) and
    must not stop it; use :func:`make_broker` for that.
    """
    return shared_broker(request, broker_pool)


@pytest.fixture
def make_broker(
    broker_pool: BrokerPool, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Broker]]:
    """Start dedicated brokers for this test: ``make_broker("acl+persistent")``.

    :param variant: fragments of ``docker/variants`` joined with ``+``.
    :param extra_config: more ``mosquitto.conf`` lines for this broker only.
    :param acl_file: the ACL this broker loads instead of ``docker/acl`` (a solution's own).
    :param password_file: a ``mosquitto_passwd`` file for the ``hardened`` variant.
    Each broker is stopped and its files removed when the test ends.
    """
    mine: list[Broker] = []
    config = request.config

    def start(
        variant: str = "open",
        *,
        extra_config: str = "",
        acl_file: os.PathLike[str] | str | None = None,
        password_file: os.PathLike[str] | str | None = None,
    ) -> Broker:
        custom = extra_config or acl_file or password_file
        if broker_pool.backend == "external" and (variant != "open" or custom):
            where = config.stash[CONNECTION].display_url()
            pytest.skip(
                f"the external broker at {where} is not the lab's to "
                f"configure: this test needs the {variant!r} variant"
                + (" with extra settings" if custom else "")
            )
        options: dict[str, Any] = {"extra_config": extra_config} if extra_config else {}
        if acl_file is not None:
            options["acl_file"] = Path(acl_file)
        if password_file is not None:
            options["password_file"] = Path(password_file)
        broker = broker_or_fail(lambda: broker_pool.start(variant, **options))
        mine.append(broker)
        return remember_broker(request, broker)

    yield start
    for broker in mine:
        broker_pool.release(broker)


@pytest.fixture
def topic_root() -> str:
    """A topic root that no other test uses: ``lab/<8 hex>/factory``."""
    return f"lab/{uuid.uuid4().hex[:8]}/factory"


@pytest.fixture(params=[pytest.param(p, id=f"mqtt{p}") for p in PROTOCOLS])
def protocol(request: pytest.FixtureRequest) -> str:
    """Each MQTT version the lab speaks (``"3.1.1"``, ``"5"``): a test that asks for it runs
    once per version (ids ``mqtt3.1.1`` and ``mqtt5``); the MQTT 5 run is skipped on a broker
    that does not accept MQTT 5 (the probe's reason)."""
    return request.param


def capabilities_of(config: pytest.Config, pool: BrokerPool) -> Capabilities:
    """The shared broker's capabilities: probed at the first need, once per process.

    An external broker was probed when the session started (and xdist's controller handed
    the result to its workers); a broker the lab starts is probed once it runs.
    """
    if NOT_READY_KEY in config.stash:
        pytest.fail(config.stash[NOT_READY_KEY], pytrace=False)
    found = config.stash.get(CAPABILITIES_KEY, None)
    if found is None:
        broker = broker_or_fail(lambda: pool.shared("open"))
        try:
            found = probe(broker.connection)
        except BrokerNotReady as error:
            config.stash[NOT_READY_KEY] = str(error)
            pytest.fail(str(error), pytrace=False)
        config.stash[CAPABILITIES_KEY] = found
    return found


#: test parameters that hold the QoS a test publishes with (a will is published too)
PUBLISH_QOS_PARAMETERS = ("qos", "pub_qos", "will_qos")


def needed_capabilities(item: pytest.Item, *, implied: bool = True) -> list[str]:
    """What an experiment needs: its ``needs`` marks and, when ``implied``, ``mqtt5`` for an
    MQTT 5 run (a ``protocol`` parameter of "5") and ``qos1``/``qos2`` for the QoS it publishes
    with (:data:`PUBLISH_QOS_PARAMETERS`)."""
    names: list[str] = []
    for mark in item.iter_markers("needs"):
        names.extend(mark.args)
    params = getattr(getattr(item, "callspec", None), "params", {})
    if implied and params.get("protocol") == "5":
        names.append("mqtt5")
    if implied and item.get_closest_marker("broker") is not None:
        names.insert(0, "lab_topics")  # every experiment talks under lab/ and syncs on lab/sync/
    if implied:
        # the QoS a test publishes with (its subscriptions' QoS is the broker's to grant)
        names.extend(f"qos{params[n]}" for n in PUBLISH_QOS_PARAMETERS if params.get(n) in (1, 2))
    unknown = sorted(set(names) - set(CAPABILITIES))
    if unknown:
        raise pytest.UsageError(
            f"{item.nodeid}: @pytest.mark.needs({', '.join(map(repr, unknown))}) names no "
            f"capability the lab probes; choose from {', '.join(CAPABILITIES)}"
        )
    return list(dict.fromkeys(names))


@pytest.fixture(autouse=True)
def _skip_what_the_broker_lacks(request: pytest.FixtureRequest, broker_pool: BrokerPool) -> None:
    """Skip an experiment whose needs the shared broker lacks, before any client connects.

    On a broker the lab starts (Mosquitto, which has everything) only declared needs cause
    a probe; on an external one, MQTT 5 runs and QoS parameters count too.
    """
    external = request.config.stash.get(CONNECTION, None) is not None
    names = needed_capabilities(request.node, implied=external)
    if not names:
        return
    reason = capabilities_of(request.config, broker_pool).reason(names)
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def broker_capabilities(request: pytest.FixtureRequest, broker_pool: BrokerPool) -> Capabilities:
    """What the shared broker can do (:class:`~mqtt_factory_lab.capabilities.Capabilities`)."""
    return capabilities_of(request.config, broker_pool)


class Behaviour:
    """What the broker does where the specifications let it choose (MAY, SHOULD, or left to
    the implementation): observed and reported, never failed, on a broker someone else runs.

    On the lab's own Mosquitto the lesson's claim is checked, because the lesson teaches
    Mosquitto's behaviour: a different answer there means the lesson is out of date.
    """

    def __init__(self, item: pytest.Item, lab_broker: bool) -> None:
        self.item = item
        self.lab_broker = lab_broker

    def observe(self, what: str, *, as_taught: bool, lesson: str) -> None:
        """Record ``what`` the broker did (a sentence); ``as_taught``: whether it is what the
        lesson teaches (Mosquitto's choice), spelled out in ``lesson``."""
        __tracebackhide__ = True
        self.item.user_properties.append(("observed", what))
        if self.lab_broker and not as_taught:
            raise AssertionError(f"{lesson}\nThe lab's Mosquitto did otherwise: {what}")


@pytest.fixture
def behaviour(request: pytest.FixtureRequest) -> Behaviour:
    """Record the broker's choice where the specifications allow several (see :class:`Behaviour`)."""
    return Behaviour(request.node, request.config.stash.get(CONNECTION, None) is None)


@pytest.fixture
def lab_seed(pytestconfig: pytest.Config) -> int:
    """The seed simulators and generated data use (``--lab-seed``)."""
    return pytestconfig.getoption("--lab-seed")


@pytest.fixture
def mqtt_client(
    request: pytest.FixtureRequest, broker_pool: BrokerPool
) -> Iterator[Callable[..., RecordingClient]]:
    """Make connected MQTT clients; all are disconnected after the test.

    :param client_id: default: the test's name plus a counter and a random suffix.
    :param protocol: ``"5"`` (default) or ``"3.1.1"``.
    :param clean_start: MQTT 5 clean start / 3.1.1 clean session (default True).
    :param session_expiry: MQTT 5 session expiry interval in seconds.
    :param will: Last Will ``(topic, payload, qos, retain)``.
    :param broker: the broker to use (default: the shared ``broker``).
    :param connect: connect now (default True).
    :param username: user name in the CONNECT (with ``password``), for brokers that check them.

    Example::

        def test_hello(mqtt_client, topic_root):
            sub = mqtt_client(protocol="3.1.1")
            sub.subscribe(f"{topic_root}/#")
    """
    clients: list[RecordingClient] = []
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)[:40].strip("-")

    def make(
        client_id: str | None = None,
        *,
        protocol: str = "5",
        clean_start: bool = True,
        session_expiry: int | None = None,
        will: tuple[str, bytes | str, int, bool] | None = None,
        broker: Broker | None = None,
        connect: bool = True,
        username: str | None = None,
        password: str | None = None,
    ) -> RecordingClient:
        if broker is None:
            target = shared_broker(request, broker_pool)
            if protocol == "5" and request.config.stash.get(CONNECTION, None) is not None:
                reason = capabilities_of(request.config, broker_pool).reason(["mqtt5"])
                if reason is not None:
                    pytest.skip(reason)
        else:
            target = broker
        settings = target.connection.for_protocol(protocol)
        client = RecordingClient(
            settings.host,
            settings.port,
            client_id or f"{base}-{len(clients) + 1}-{uuid.uuid4().hex[:6]}",
            protocol=protocol,
            clean_start=clean_start,
            session_expiry=session_expiry,
            will=will,
            username=username,
            password=password,
            describe_broker=target.health,
            connection=settings,
        )
        clients.append(client)
        if connect:
            client.connect()
        return client

    yield make
    for client in clients:
        client.disconnect()


@pytest.fixture
def broker_env(
    request: pytest.FixtureRequest, broker_pool: BrokerPool, topic_root: str
) -> Callable[..., dict[str, str]]:
    """``broker_env(broker=None, topic_root=None, protocol="5")``: a factory program's environment.

    A copy of ``os.environ`` with ``VF_BROKER_HOST``, ``VF_BROKER_PORT``, ``VF_TOPIC_ROOT``
    and ``VF_MQTT_PROTOCOL`` set, and unbuffered Python output
    (:func:`mqtt_factory_lab.factory.program_env`). By default the shared broker and the
    test's topic root.
    """

    def make(
        broker: Broker | Address | None = None, root: str | None = None, protocol: str = "5"
    ) -> dict[str, str]:
        target = broker if broker is not None else shared_broker(request, broker_pool)
        return program_env(target, root or topic_root, protocol)

    return make
