"""The lab's pytest plugin: options, markers and fixtures that connect lessons to brokers.

The root ``conftest.py`` loads it; another project can load it through the
``pytest11`` entry point ``mqtt_factory_lab.plugin`` (see ``pyproject.toml``).

Fixtures
--------
``broker``            the shared broker of the ``open`` variant (per worker)
``broker_factory``    ``broker_factory("acl+persistent")``: a dedicated broker for one test
``mqtt_client``       ``mqtt_client(protocol="3.1.1")``: connected :class:`RecordingClient` s
``topic_root``        a topic root no other test uses, such as ``lab/3f9a1c2b/factory``
``broker_env``        ``broker_env(broker, topic_root)``: ``VF_*`` variables for a subprocess
``lab_seed``          the run's random seed (``--lab-seed``)

and, from :mod:`mqtt_factory_lab.factory_fixtures`, ``device``, ``factory``,
``observer_capture`` and ``solution``.
"""

from __future__ import annotations

import os
import re
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mqtt_factory_lab.brokers import (
    BACKENDS,
    CONFIG,
    LOG,
    RESTART,
    Broker,
    BrokerError,
    BrokerUnavailable,
    make_broker,
    resolve_backend,
)
from mqtt_factory_lab.brokers.base import format_log
from mqtt_factory_lab.client import RecordingClient
from mqtt_factory_lab.factory import program_env

#: the factory fixtures (device, factory, observer_capture) come with the broker ones
pytest_plugins = ["mqtt_factory_lab.factory_fixtures", "mqtt_factory_lab.acl"]

ENV_BACKEND = "MQTT_LAB_BROKER_BACKEND"
ENV_URL = "MQTT_LAB_BROKER_URL"
_SKIP_REASONS = {
    RESTART: "restarts or stops the broker",
    CONFIG: "needs a broker configuration the lab chooses (ACL file, persistence)",
    LOG: "reads the broker's log",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mqtt-factory-lab", "MQTT factory lab (broker harness)")
    group.addoption(
        "--broker-backend",
        choices=BACKENDS,
        default=os.environ.get(ENV_BACKEND, "auto"),
        help=(
            "where brokers come from: local = the mosquitto executable, docker = a container "
            "via testcontainers, external = the broker at --broker-url, auto = docker if an "
            f"engine answers, else local (default: ${ENV_BACKEND} or auto)"
        ),
    )
    group.addoption(
        "--broker-url",
        default=os.environ.get(ENV_URL),
        metavar="mqtt://HOST:PORT",
        help=f"use a broker someone else runs (implies --broker-backend=external; ${ENV_URL})",
    )
    group.addoption(
        "--docker-image",
        default=None,
        help="Mosquitto image for the docker backend (default: $MQTT_LAB_DOCKER_IMAGE or the pinned one)",
    )
    group.addoption(
        "--docker-network",
        choices=("bridge", "host"),
        default=None,
        help="docker backend networking: bridge = mapped port (default), host = host network "
        "on 127.0.0.1 ($MQTT_LAB_DOCKER_NETWORK)",
    )
    group.addoption(
        "--lab-seed",
        type=int,
        default=int(os.environ.get("MQTT_LAB_SEED", "1")),
        help="seed for simulators and generated data, for repeatable runs (default 1)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "lesson(number): the lesson this experiment belongs to (labs/NN_*.py)"
    )
    config.addinivalue_line(
        "markers",
        "broker: an experiment on the broker's MQTT semantics with plain clients "
        "(conformance: `pytest labs -m broker --broker-url URL`)",
    )
    config.addinivalue_line(
        "markers",
        "solution: an experiment that runs the solution's own programs or files "
        "(grading: `pytest labs -m solution --solution PATH`)",
    )
    config.addinivalue_line(
        "markers",
        "broker_needs(*capabilities): skip on a backend that cannot 'restart', 'config' "
        "(choose ACL/persistence) or read the 'log' of its broker (--broker-url)",
    )
    _stop_cleanly_on_sigterm()


def _stop_cleanly_on_sigterm() -> None:
    """Let SIGTERM tear down like Ctrl-C does, so brokers and simulators are stopped."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"received signal {signum}")

    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        pass


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not (config.getoption("--broker-url") or config.getoption("--broker-backend") == "external"):
        return
    for item in items:
        for mark in item.iter_markers("broker_needs"):
            missing = [c for c in mark.args if c in _SKIP_REASONS]
            if missing:
                reasons = "; ".join(_SKIP_REASONS[c] for c in missing)
                item.add_marker(
                    pytest.mark.skip(
                        reason=f"the external broker is not the lab's to control: this test {reasons}"
                    )
                )


# -- brokers ------------------------------------------------------------------
#: the brokers a test used, with the log position at which it started using each
_BROKERS_KEY = pytest.StashKey[list[tuple[Broker, int]]]()


def _remember(request: pytest.FixtureRequest, broker: Broker) -> None:
    try:
        mark = broker.log_mark()
    except BrokerError:
        mark = 0
    request.node.stash[_BROKERS_KEY] = [*request.node.stash.get(_BROKERS_KEY, []), (broker, mark)]


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
        """Start a dedicated broker (closed by :meth:`close` or the caller)."""
        broker = make_broker(
            self.backend,
            variant,
            url=self.config.getoption("--broker-url"),
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


def _broker_or_fail(start: Callable[[], Broker]) -> Broker:
    """Start a broker, turning a harness error into one clean failure message."""
    try:
        return start()
    except BrokerUnavailable as error:
        message = str(error)
    except BrokerError as error:
        message = f"the broker could not start:\n{error}"
    # Outside the except block, so the report shows the advice once, without a chained traceback.
    pytest.fail(message, pytrace=False)


def _skip_unless_configurable(pool: BrokerPool, variant: str, extra_config: str) -> None:
    if pool.backend == "external" and (variant != "open" or extra_config):
        pytest.skip(
            f"the external broker at {pool.config.getoption('--broker-url')} is not the lab's to "
            f"configure: this test needs the {variant!r} variant{' with extra settings' if extra_config else ''}"
        )


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
    must not stop it; use :func:`broker_factory` for that.
    """
    broker = _broker_or_fail(lambda: broker_pool.shared("open"))
    _remember(request, broker)
    return broker


@pytest.fixture
def broker_factory(
    broker_pool: BrokerPool, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Broker]]:
    """Start dedicated brokers for this test: ``broker_factory("acl+persistent")``.

    :param variant: fragments of ``docker/variants`` joined with ``+``.
    :param extra_config: more ``mosquitto.conf`` lines for this broker only.
    :param acl_file: the ACL this broker loads instead of ``docker/acl`` (a solution's own).
    :param password_file: a ``mosquitto_passwd`` file for the ``hardened`` variant.
    Each broker is stopped and its files removed when the test ends.
    """
    mine: list[Broker] = []

    def start(
        variant: str = "open",
        *,
        extra_config: str = "",
        acl_file: os.PathLike[str] | str | None = None,
        password_file: os.PathLike[str] | str | None = None,
    ) -> Broker:
        custom = extra_config or (acl_file and "acl") or (password_file and "passwd") or ""
        _skip_unless_configurable(broker_pool, variant, custom)
        options: dict[str, Any] = {"extra_config": extra_config} if extra_config else {}
        if acl_file is not None:
            options["acl_file"] = Path(acl_file)
        if password_file is not None:
            options["password_file"] = Path(password_file)
        broker = _broker_or_fail(lambda: broker_pool.start(variant, **options))
        mine.append(broker)
        _remember(request, broker)
        return broker

    yield start
    for broker in mine:
        broker_pool.release(broker)


@pytest.fixture
def topic_root() -> str:
    """A topic root that no other test uses: ``lab/<8 hex>/factory``."""
    return f"lab/{uuid.uuid4().hex[:8]}/factory"


@pytest.fixture
def lab_seed(pytestconfig: pytest.Config) -> int:
    """The seed simulators and generated data use (``--lab-seed``)."""
    return pytestconfig.getoption("--lab-seed")


@pytest.fixture
def mqtt_client(request: pytest.FixtureRequest) -> Iterator[Callable[..., RecordingClient]]:
    """Make connected MQTT clients; all are disconnected after the test.

    :param client_id: default: the test's name plus a counter and a random suffix.
    :param protocol: ``"5"`` (default) or ``"3.1.1"``.
    :param clean_start: MQTT 5 clean start / 3.1.1 clean session (default True).
    :param session_expiry: MQTT 5 session expiry interval in seconds.
    :param will: Last Will ``(topic, payload, qos, retain)``.
    :param broker: the broker to use (default: the shared ``broker`` fixture).
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
        target = broker if broker is not None else request.getfixturevalue("broker")
        client = RecordingClient(
            target.host,
            target.port,
            client_id or f"{base}-{len(clients) + 1}-{uuid.uuid4().hex[:6]}",
            protocol=protocol,
            clean_start=clean_start,
            session_expiry=session_expiry,
            will=will,
            username=username,
            password=password,
            describe_broker=target.health,
        )
        clients.append(client)
        if connect:
            client.connect()
        return client

    yield make
    for client in clients:
        client.disconnect()


@pytest.fixture
def broker_env() -> Callable[..., dict[str, str]]:
    """``broker_env(broker, topic_root)``: the environment a factory program needs.

    Returns a copy of ``os.environ`` with ``VF_BROKER_HOST``, ``VF_BROKER_PORT``,
    ``VF_TOPIC_ROOT`` and ``VF_MQTT_PROTOCOL`` set, and unbuffered Python output
    (:func:`mqtt_factory_lab.factory.program_env`).
    """

    return program_env


# -- reporting ------------------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """On failure, attach each broker's state and last log lines to the report."""
    report = yield
    if report.failed:
        for broker, mark in item.stash.get(_BROKERS_KEY, []):
            section = broker.health()
            if LOG in broker.capabilities:
                try:
                    lines = broker.log_lines()[mark:]
                    section += f"\n  its log during this test (last 30 of {len(lines)} lines):\n"
                    section += format_log(lines, 30)
                except Exception as error:  # the broker may be gone; the report must not be
                    section += f"\n    (log unavailable: {error})"
            report.sections.append((f"broker {broker.variant} ({broker.backend})", section))
    return report


def pytest_report_header(config: pytest.Config) -> str:
    backend = config.getoption("--broker-backend")
    url = config.getoption("--broker-url")
    return f"mqtt-factory-lab: broker backend {backend}{f' ({url})' if url else ''}"
