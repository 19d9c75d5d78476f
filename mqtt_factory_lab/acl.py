"""Access control checks: a permission matrix as data, and a broker that loads the ACL under test.

Lesson 06 (``labs/06_acl.py``) holds an ACL file to a *permission matrix*: for
every client of the factory and every topic, may it publish, may it subscribe?
This module reads such a matrix, turns it into one experiment per cell, and
starts brokers that load the ACL under test. Two options let a platform team
check its own broker configuration in CI (see ``docs/acl.md``)::

    pytest labs/06_acl.py -k matrix --acl-file deploy/mosquitto/acl --acl-matrix deploy/matrix.toml

A matrix in TOML::

    [clients.press-01]            # the key is the client id
    role = "a device"
    [clients.dashboard]
    role = "the dashboard"
    username = "dashboard"        # optional: the user name in its CONNECT (never a password:
                                  # the lesson's broker takes user names at face value)

    [publish]                     # topic -> the clients that may publish it
    "factory/telemetry/press-01/temperature" = ["press-01"]
    [subscribe]                   # topic -> the clients that may read it
    "factory/telemetry/press-01/temperature" = ["dashboard"]

Every client not listed for a topic is denied. Both tables name the same topics;
each topic needs a client that may write it and one that may read it, which the
experiments use as witnesses.

Fixtures: ``acl_file`` (the ACL under test), ``acl_broker`` (a broker of the
``acl`` variant loading it, shared by the tests of one module).
"""

from __future__ import annotations

import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mqtt_factory_lab.broker_fixtures import BrokerPool, broker_or_fail, remember_broker
from mqtt_factory_lab.brokers import Broker
from mqtt_factory_lab.solution import ManifestError, Solution

ACTIONS = ("publish", "subscribe")
#: what a leak on each kind of topic (its second level) exposes, relative to a reading
HARM = {"commands": 3.0, "alarms": 2.0, "state": 2.0, "status": 2.0, "events": 1.0}
#: how much more a leak to a client with no right at all costs
STRANGER_FACTOR = 10.0


class MatrixError(ValueError):
    """A permission matrix that cannot be checked; the message names the entry."""


@dataclass(frozen=True)
class MatrixClient:
    """One client of the matrix: how it connects, and what it is in the factory."""

    client_id: str
    role: str = ""
    username: str | None = None

    def describe(self) -> str:
        about = [self.role] if self.role else []
        about += [f"user {self.username!r}"] if self.username else []
        return f"{self.client_id} ({', '.join(about)})" if about else self.client_id


@dataclass(frozen=True)
class Cell:
    """One cell of the matrix: may ``client`` ``action`` ``topic``?

    :ivar witness: for a publish, a client that may read the topic (it must see an
        allowed message); for a subscribe, a client that may write it.
    :ivar control: for a denied cell, the client on the other side of the proof
        (a rightful writer or reader), so that "nothing arrived" means denied,
        not "nobody could have seen it".
    """

    client: MatrixClient
    action: str
    topic: str
    allowed: bool
    witness: MatrixClient
    control: MatrixClient | None
    #: the client has no right anywhere in the matrix (an anonymous stranger)
    stranger: bool = False

    @property
    def weight(self) -> float:
        """What a wrong verdict on this cell costs, relative to a right the ACL forgot (1).

        Points follow harm: a denial that leaks weighs by what the topic exposes (forging a
        command stops a machine; reading it only tells), and far more when the
        leak is to a stranger, who has no business on the broker at all (ten times).
        """
        if self.allowed:
            return 1.0
        kind = self.topic.split("/")[1] if "/" in self.topic else ""
        harm = HARM.get(kind, 1.0) * (1.5 if self.action == "publish" else 1.0)
        return harm * (STRANGER_FACTOR if self.stranger else 1.0)

    @property
    def id(self) -> str:
        verdict = "allowed" if self.allowed else "denied"
        return f"{self.client.client_id}-{self.action}-{self.topic}-{verdict}"


@dataclass(frozen=True)
class Matrix:
    """Who may publish and subscribe to what; every other combination is denied."""

    clients: dict[str, MatrixClient]
    publish: dict[str, tuple[str, ...]]
    subscribe: dict[str, tuple[str, ...]]
    source: str = "the lesson's matrix"

    def may(self, client_id: str, action: str, topic: str) -> bool:
        return client_id in (self.publish if action == "publish" else self.subscribe)[topic]

    def _first(self, ids: tuple[str, ...], besides: str) -> MatrixClient | None:
        others = [self.clients[i] for i in ids if i != besides]
        return others[0] if others else (self.clients[ids[0]] if ids else None)

    def cells(self, action: str) -> list[Cell]:
        """Every (client, topic) cell of one action, in the matrix's order."""
        cells = []
        for topic in self.publish:
            writers, readers = self.publish[topic], self.subscribe[topic]
            for client in self.clients.values():
                allowed = self.may(client.client_id, action, topic)
                if action == "publish":
                    witness = self._first(readers, client.client_id)
                    control = None if allowed else self._first(writers, client.client_id)
                else:
                    witness = self._first(writers, client.client_id)
                    control = None if allowed else self._first(readers, client.client_id)
                assert witness is not None  # parse_matrix checked every topic has both
                stranger = not any(
                    client.client_id in ids
                    for table in (self.publish, self.subscribe)
                    for ids in table.values()
                )
                cells.append(Cell(client, action, topic, allowed, witness, control, stranger))
        return cells


def parse_matrix(text: str, source: str = "the lesson's matrix") -> Matrix:
    """Read a matrix from TOML text. :raises MatrixError: naming what is wrong."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise MatrixError(f"{source} is not valid TOML: {error}") from error
    clients_data = data.get("clients")
    if not isinstance(clients_data, dict) or not clients_data:
        raise MatrixError(f"{source} has no [clients.<client id>] tables")
    clients = {}
    for client_id, spec in clients_data.items():
        if not isinstance(spec, dict):
            raise MatrixError(f"{source}: [clients.{client_id}] must be a table")
        username = spec.get("username")
        if username is not None and not isinstance(username, str):
            raise MatrixError(f"{source}: [clients.{client_id}] username must be a string")
        clients[client_id] = MatrixClient(client_id, str(spec.get("role", "")), username)
    tables: dict[str, dict[str, tuple[str, ...]]] = {}
    for action in ACTIONS:
        table = data.get(action)
        if not isinstance(table, dict) or not table:
            raise MatrixError(f"{source} has no [{action}] table (topic = [client ids])")
        tables[action] = {}
        for topic, ids in table.items():
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise MatrixError(f"{source}: [{action}] {topic!r} must be a list of client ids")
            unknown = [i for i in ids if i not in clients]
            if unknown:
                raise MatrixError(
                    f"{source}: [{action}] {topic!r} names {', '.join(unknown)}, which is not "
                    f"among [clients] ({', '.join(clients)})"
                )
            if any(c in topic for c in "+#"):
                raise MatrixError(
                    f"{source}: [{action}] {topic!r} is a filter; the matrix lists topic names, "
                    "each checked with one real message"
                )
            tables[action][topic] = tuple(ids)
    if set(tables["publish"]) != set(tables["subscribe"]):
        odd = sorted(set(tables["publish"]) ^ set(tables["subscribe"]))
        raise MatrixError(
            f"{source}: [publish] and [subscribe] must list the same topics; only one lists "
            f"{', '.join(odd)}"
        )
    for topic in tables["publish"]:
        for action, needs in (("publish", "writer"), ("subscribe", "reader")):
            if not tables[action][topic]:
                raise MatrixError(
                    f"{source}: nobody may {action} {topic!r}; the check needs a {needs} as its "
                    "witness (give the topic at least one)"
                )
    return Matrix(clients, tables["publish"], tables["subscribe"], source)


def load_matrix(path: str | Path) -> Matrix:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise MatrixError(f"cannot read the permission matrix {path}: {error}") from error
    return parse_matrix(text, str(path))


_MATRIX_KEY = pytest.StashKey[Matrix]()


def matrix_for(config: pytest.Config, default: str) -> Matrix:
    """The matrix of ``--acl-matrix`` (read at start-up), else ``default`` (TOML text)."""
    return config.stash.get(_MATRIX_KEY, None) or parse_matrix(default)


def parametrize_cells(metafunc: pytest.Metafunc, default: str) -> None:
    """For a lesson's ``pytest_generate_tests``: one test per ``publish_cell`` / ``subscribe_cell``."""
    for action in ACTIONS:
        name = f"{action}_cell"
        if name in metafunc.fixturenames:
            cells = matrix_for(metafunc.config, default).cells(action)
            metafunc.parametrize(
                name,
                [pytest.param(c, id=c.id, marks=pytest.mark.weight(c.weight)) for c in cells],
            )


# -- options and fixtures ------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mqtt-factory-lab")
    group.addoption(
        "--acl-file",
        metavar="PATH",
        default=None,
        help="the Mosquitto ACL file lesson 06 loads into its brokers and checks against the "
        "permission matrix (default: the solution's [files] acl)",
    )
    group.addoption(
        "--acl-matrix",
        metavar="PATH",
        default=None,
        help="the permission matrix (TOML: [clients], [publish], [subscribe]; see docs/acl.md) "
        "lesson 06 holds the ACL to (default: the one written in labs/06_acl.py)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Read ``--acl-matrix`` once, before collection: a bad one stops the run in one sentence."""
    path = config.getoption("--acl-matrix", None)
    if path:
        try:
            config.stash[_MATRIX_KEY] = load_matrix(path)
        except MatrixError as error:
            raise pytest.UsageError(f"--acl-matrix: {error}") from error


@pytest.fixture(scope="session")
def acl_file(pytestconfig: pytest.Config, solution: Solution) -> Path:
    """The ACL under test: ``--acl-file``, else the solution's ``[files] acl``."""
    option = pytestconfig.getoption("--acl-file")
    if option:
        path = Path(option).resolve()
        if not path.is_file():
            pytest.fail(f"--acl-file {option}: no such file ({path})", pytrace=False)
        return path
    try:
        return solution.require_file(
            "acl",
            why="lesson 06 loads the solution's own Mosquitto ACL into its brokers and checks "
            "it against the factory's permission matrix",
        )
    except ManifestError as error:
        message = str(error)
    pytest.fail(message, pytrace=False)


#: the rule every ACL under test keeps: the lab's round trip (``RecordingClient.sync``) through it
SYNC_RULE = "pattern readwrite lab/sync/%c/#"


def round_trip_problem(broker: Broker, acl_file: Path) -> str | None:
    """One sentence when the lab's round trip cannot pass the ACL, else None.

    Every cell proves a denial with a round trip through ``lab/sync/<client id>/#``;
    without it each of them would wait for its deadline and fail alike. Checked once,
    by one client, before any cell runs.
    """
    from mqtt_factory_lab.client import MQTTTimeout, RecordingClient

    settings = broker.connection.for_protocol("5")
    client = RecordingClient(
        settings.host,
        settings.port,
        f"lab-acl-probe-{uuid.uuid4().hex[:6]}",
        describe_broker=broker.health,
        connection=settings,
    )
    try:
        client.connect()
        client.sync(timeout=3)
    except (MQTTTimeout, ConnectionError):
        return (
            f"The lab's round trip through lab/sync/<client id>/# does not pass your ACL "
            f"({acl_file.name}), so no cell of the permission matrix can be proven: keep the "
            f"line `{SYNC_RULE}` in it (the starter's acl has it)."
        )
    finally:
        client.disconnect()
    return None


@dataclass
class AclBroker:
    """The module's broker and, when the ACL blocks the lab's round trip, why (checked once)."""

    broker: Broker
    problem: str | None


@pytest.fixture(scope="module")
def _acl_broker_of_module(broker_pool: BrokerPool, acl_file: Path) -> Iterator[AclBroker]:
    # Experiments using it are marked broker_needs(CONFIG): skipped on an external broker.
    broker = broker_or_fail(lambda: broker_pool.start("acl", acl_file=acl_file))
    yield AclBroker(broker, round_trip_problem(broker, acl_file))
    broker_pool.release(broker)


@pytest.fixture
def acl_broker(_acl_broker_of_module: AclBroker, request: pytest.FixtureRequest) -> Broker:
    """A broker of the ``acl`` variant that loads the ACL under test (:func:`acl_file`).

    Shared by the tests of one module: each cell of the matrix isolates itself by
    a unique payload, never by a topic root (the ACL names the real topics). When the
    ACL blocks the lab's round trip, every cell fails at once with the one sentence of
    :func:`round_trip_problem`, instead of each waiting for its deadline.
    """
    if _acl_broker_of_module.problem:
        pytest.fail(_acl_broker_of_module.problem, pytrace=False)
    broker = _acl_broker_of_module.broker
    if not broker.is_running():
        broker.start()
    remember_broker(request, broker)
    return broker
