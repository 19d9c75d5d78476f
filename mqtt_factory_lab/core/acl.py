"""Access control as data: a permission matrix, read and checked, and one experiment per cell.

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

The fixtures (``acl_file``, ``acl_broker``) and the parametrisation are in
:mod:`mqtt_factory_lab.fixtures.acl`; the options in :mod:`mqtt_factory_lab.plugin`.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

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
