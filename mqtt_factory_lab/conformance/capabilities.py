"""What a broker can do, found out once per run, so that a missing feature is one clear skip.

:func:`probe` connects with MQTT 3.1.1 and MQTT 5, then tries each optional feature with
real clients (a few round trips, well under a second on a local network):

=========================  =====================================================================
``mqtt3`` / ``mqtt5``      a CONNECT with that version is accepted (else: the CONNACK's reason)
``qos1`` / ``qos2``        a QoS 2 subscription is granted that QoS in SUBACK (and MQTT 5's
                           ``Maximum QoS`` allows it); a QoS 2 publish completes
``retain``                 a retained message reaches a new subscription with the retain flag
``wildcards``              ``+`` and ``#`` filters receive what they match
``sys``                    ``$SYS/#`` delivers something within a second
``shared_subscriptions``   two ``$share/…`` subscribers of one group split the messages
``lab_topics``             the login may subscribe and publish under ``lab/`` (the experiments'
                           topics, ``lab/probe/#`` and the round trips' ``lab/sync/#``)
=========================  =====================================================================

Every step turns whatever the broker does — a refusal, a closed connection, no answer, an
acknowledgement with a failure code — into a row that says so; a closed connection is
reopened for the next step. Only a broker that accepts no CONNECT at all stops the run
(:class:`BrokerNotReady`).

Experiments declare what they need (``@pytest.mark.needs("mqtt5", "shared_subscriptions")``;
the ``protocol`` fixture needs ``mqtt5`` for its MQTT 5 run). On a broker without it they are
skipped with :meth:`Capabilities.reason`, whose words start with :data:`LACKS`, so the run's
summary can count each missing feature once, as a finding, however many experiments it skips.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import Any

from mqtt_factory_lab.core.client import MQTTTimeout, RecordingClient
from mqtt_factory_lab.core.connection import (
    NOT_MQTT,
    ConnectionSettings,
    ConnectOutcome,
    try_connect,
)

#: capability name → how the table and skip reasons call it
CAPABILITIES = {
    "mqtt3": "MQTT 3.1.1",
    "mqtt5": "MQTT 5",
    "qos1": "QoS 1",
    "qos2": "QoS 2",
    "retain": "retained messages",
    "wildcards": "wildcard subscriptions",
    "sys": "$SYS topics",
    "shared_subscriptions": "shared subscriptions",
    "lab_topics": "the lab's topics (lab/#)",
}
#: what a login needs on a broker with an ACL, for the docs and the missing-grant finding
LAB_GRANTS = "readwrite lab/# (the experiments' lab/<id>/..., lab/probe/# and lab/sync/#)"
#: how every skip reason for a missing capability begins (the summary counts findings by it)
LACKS = "the broker lacks"
#: MQTT 5 CONNACK properties that advertise a capability (absent = available)
ADVERTISED = {
    "retain": "RetainAvailable",
    "wildcards": "WildcardSubscriptionAvailable",
    "shared_subscriptions": "SharedSubscriptionAvailable",
}


class BrokerNotReady(RuntimeError):
    """No CONNECT was accepted: the message says what the broker answered and what to do."""


@dataclass
class Capability:
    """One row of the table: present or not, and the evidence."""

    name: str
    present: bool
    detail: str

    @property
    def title(self) -> str:
        return CAPABILITIES[self.name]


@dataclass
class Capabilities:
    """The probe's findings for one broker.

    :ivar url: where it was probed (password masked).
    :ivar items: one :class:`Capability` per name of :data:`CAPABILITIES`.
    :ivar connack5: the properties of the MQTT 5 CONNACK (empty without MQTT 5).
    :ivar seconds: how long the probe took.
    """

    url: str
    items: dict[str, Capability] = field(default_factory=dict)
    connack5: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def has(self, name: str) -> bool:
        capability = self.items.get(name)
        return capability is not None and capability.present

    def missing(self, names: list[str] | tuple[str, ...]) -> list[Capability]:
        return [self.items[n] for n in names if n in self.items and not self.items[n].present]

    def reason(self, names: list[str] | tuple[str, ...]) -> str | None:
        """The skip reason for an experiment that needs ``names`` (None when all are present).

        One missing capability per reason, the first, so that one feature always reads the same.
        """
        lacking = self.missing(names)
        if not lacking:
            return None
        first = lacking[0]
        return f"{LACKS} {first.title}: {first.detail}"

    def table(self) -> list[str]:
        """The capability table, one line per capability, for a terminal or a report."""
        width = max(len(c.title) for c in self.items.values())
        lines = [
            f"  {c.title:<{width}}  {'yes' if c.present else 'NO ':<3}  {c.detail}"
            for c in self.items.values()
        ]
        if self.connack5:
            shown = ", ".join(f"{k}={v}" for k, v in sorted(self.connack5.items()))
            lines.append(f"  {'MQTT 5 CONNACK':<{width}}  {'':<3}  {shown}")
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "seconds": round(self.seconds, 3),
            "capabilities": {n: asdict(c) for n, c in self.items.items()},
            "connack5": self.connack5,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Capabilities:
        return cls(
            url=data["url"],
            items={n: Capability(**c) for n, c in data["capabilities"].items()},
            connack5=data.get("connack5", {}),
            seconds=data.get("seconds", 0.0),
        )


def _refusal(outcome: ConnectOutcome) -> str:
    if outcome.reason_code is not None:
        return (
            f"CONNACK {outcome.detail!r} (0x{outcome.reason_code:02X}) to an MQTT "
            f"{outcome.protocol} CONNECT"
        )
    return f"the broker {outcome.what_it_said()} to an MQTT {outcome.protocol} CONNECT"


def probe(settings: ConnectionSettings, *, timeout: float = 2.0) -> Capabilities:
    """Find out what the broker at ``settings`` can do.

    :raises BrokerNotReady: when neither MQTT 3.1.1 nor MQTT 5 is accepted (one line per
        attempt: what the broker said and what to do).
    """
    started = time.monotonic()
    found = Capabilities(settings.display_url())
    items = found.items
    outcomes: dict[str, ConnectOutcome] = {}
    for protocol in ("3.1.1", "5"):
        outcome, _ = try_connect(settings, protocol, timeout=timeout)
        outcomes[protocol] = outcome
        name = "mqtt3" if protocol == "3.1.1" else "mqtt5"
        detail = (
            f"CONNACK accepted in {outcome.seconds * 1000:.0f} ms"
            if outcome.accepted
            else _refusal(outcome)
        )
        items[name] = Capability(name, outcome.accepted, detail)
        if protocol == "3.1.1" and outcome.kind in NOT_MQTT and settings.mqtt5 is None:
            break  # the same address would not answer MQTT 5 either
    if not any(o.accepted for o in outcomes.values()):
        lines = "\n".join(f"  - {o.sentence()}" for o in outcomes.values())
        raise BrokerNotReady(
            f"no MQTT broker accepted a CONNECT at {settings.display_url()}:\n{lines}"
        )
    items.setdefault("mqtt5", Capability("mqtt5", False, "not tried"))
    if outcomes.get("5") is not None and outcomes["5"].accepted:
        found.connack5 = outcomes["5"].properties
    protocol = "5" if items["mqtt5"].present else "3.1.1"
    root = f"lab/probe/{uuid.uuid4().hex[:8]}"
    with ExitStack() as stack:

        def client(name: str) -> RecordingClient:
            target = settings.for_protocol(protocol)
            made = RecordingClient(
                target.host,
                target.port,
                f"lab-probe-{name}-{uuid.uuid4().hex[:6]}",
                protocol=protocol,
                connection=target,
            )
            stack.callback(made.disconnect)
            made.connect(timeout=timeout)
            return made

        main = [client("main")]

        def step(names: tuple[str, ...], run: Any) -> None:
            """One probe step: whatever the broker does becomes the rows of ``names``."""
            try:
                run(main[0])
            except (ConnectionError, MQTTTimeout, OSError) as error:
                said = str(error).split(". (", 1)[0]
                for name in names:
                    items.setdefault(name, Capability(name, False, f"probe: {said}"))
            if not main[0].connected:  # the broker closed it: a fresh client for the next step
                with contextlib.suppress(ConnectionError, OSError):
                    main[0] = client("main")

        step(("lab_topics",), lambda c: _probe_lab_topics(c, root, items))
        if items["lab_topics"].present:
            step(("qos1", "qos2"), lambda c: _probe_qos(c, root, items, found.connack5))
            step(("retain",), lambda c: _probe_retain(c, root, items, found.connack5))
            step(("wildcards",), lambda c: _probe_wildcards(c, root, items, found.connack5))
            step(("sys",), lambda c: _probe_sys(c, items))
            step(
                ("shared_subscriptions",),
                lambda c: _probe_shared(client, c, root, items, found.connack5),
            )
        # else: every other step talks on lab/probe/# and round-trips on lab/sync/#
    found.items = {
        name: items.get(name, Capability(name, False, "not probed: the lab's topics are denied"))
        for name in CAPABILITIES
    }
    found.seconds = time.monotonic() - started
    return found


def _probe_lab_topics(main: RecordingClient, root: str, items: dict[str, Capability]) -> None:
    """May this login use the lab's topics? A refusal or a silent drop is named as a missing
    ACL grant, because every experiment would otherwise fail on its own."""
    login = f"user {main.connection.username!r}" if main.connection.username else "anonymous"
    missing = []
    # its own branch: a probe filter must not overlap the later steps' topics
    for topic_filter in (f"{root}/grant/#", f"lab/sync/{main.client_id}/#"):
        codes = main.subscribe(topic_filter, qos=1)
        if not codes or codes[0].is_failure:
            code = f"{codes[0]} (0x{codes[0].value:02X})" if codes else "no reason code"
            missing.append(f"SUBACK {code} to {topic_filter}")
            continue
        topic = f"{topic_filter[:-2]}/check"
        info = main.publish(topic, b"grant?", qos=1, timeout=2.0)
        answer = main.puback_reason(info)
        if answer is not None and answer.is_failure:
            missing.append(f"PUBACK {answer} (0x{answer.value:02X}) to a publish on {topic}")
            continue
        try:
            if topic_filter.startswith("lab/sync/"):
                main.sync(timeout=2.0)  # round-trip markers are not "received" messages
            else:
                main.wait_for_message(topic, timeout=1.0)
        except MQTTTimeout:
            missing.append(f"a publish on {topic} never came back to its subscriber")
    if missing:
        items["lab_topics"] = Capability(
            "lab_topics",
            False,
            f"the broker's ACL does not grant {login} the lab's topics ({'; '.join(missing)}): "
            f"grant it {LAB_GRANTS}",
        )
    else:
        items["lab_topics"] = Capability(
            "lab_topics", True, f"{login} may subscribe and publish under lab/"
        )


def _probe_qos(
    main: RecordingClient, root: str, items: dict[str, Capability], connack5: dict[str, Any]
) -> None:
    topic = f"{root}/qos"
    codes = main.subscribe(topic, qos=2)
    advertised = connack5.get("MaximumQoS")
    if not codes or codes[0].is_failure:
        why = f"SUBACK refused a QoS 2 subscription: {codes[0] if codes else 'no reason code'}"
        items["qos1"] = Capability("qos1", False, why)
        items["qos2"] = Capability("qos2", False, why)
        return
    granted = codes[0].value
    maximum = min(granted, 2 if advertised is None else int(advertised))
    where = f"SUBACK granted QoS {granted} to a QoS 2 subscription"
    if advertised is not None:
        where += f"; CONNACK Maximum QoS {advertised}"
    items["qos1"] = Capability("qos1", maximum >= 1, where)
    if maximum < 2:
        items["qos2"] = Capability("qos2", False, where)
        return
    try:
        main.publish(topic, b"qos2", qos=2, timeout=2.0)
        got = main.wait_for_message(topic, timeout=2.0)
    except (ConnectionError, MQTTTimeout) as error:
        said = str(error).split(". (", 1)[0]
        items["qos2"] = Capability("qos2", False, f"{where}, but a QoS 2 publish failed: {said}")
        return
    items["qos2"] = Capability("qos2", True, f"{where}; delivered at QoS {got.qos}")


def _probe_retain(
    main: RecordingClient, root: str, items: dict[str, Capability], connack5: dict[str, Any]
) -> None:
    if connack5.get(ADVERTISED["retain"]) == 0:
        items["retain"] = Capability("retain", False, "CONNACK Retain Available = 0")
        return
    topic = f"{root}/retain"
    main.publish(topic, b"kept", qos=1, retain=True)
    main.subscribe(topic, qos=1)
    main.sync()
    stored = main.received(topic)
    main.publish(topic, b"", qos=1, retain=True)  # leave nothing behind
    if stored and stored[0].retain:
        items["retain"] = Capability("retain", True, "a new subscription got the stored message")
    elif stored:
        items["retain"] = Capability(
            "retain", False, "a new subscription got the message without the retain flag"
        )
    else:
        items["retain"] = Capability(
            "retain", False, "a new subscription got no stored message (publish was retained)"
        )


def _probe_wildcards(
    main: RecordingClient, root: str, items: dict[str, Capability], connack5: dict[str, Any]
) -> None:
    if connack5.get(ADVERTISED["wildcards"]) == 0:
        items["wildcards"] = Capability(
            "wildcards", False, "CONNACK Wildcard Subscription Available = 0"
        )
        return
    refused = []
    for pattern in (f"{root}/w/+/x", f"{root}/m/#"):
        codes = main.subscribe(pattern, qos=1)
        if not codes or codes[0].is_failure:
            refused.append(f"{pattern}: {codes[0] if codes else 'no reason code'}")
    if refused:
        items["wildcards"] = Capability("wildcards", False, f"SUBACK refused {'; '.join(refused)}")
        return
    main.publish(f"{root}/w/a/x", b"+", qos=1)
    main.publish(f"{root}/m/b/c", b"#", qos=1)
    main.sync()
    got = {m.topic for m in main.received()}
    wanted = {f"{root}/w/a/x", f"{root}/m/b/c"}
    items["wildcards"] = Capability(
        "wildcards",
        wanted <= got,
        "'+' and '#' filters received what they match"
        if wanted <= got
        else f"filters with '+' and '#' missed {sorted(wanted - got)}",
    )


def _probe_sys(main: RecordingClient, items: dict[str, Capability]) -> None:
    codes = main.subscribe("$SYS/#", qos=0)
    if not codes or codes[0].is_failure:
        items["sys"] = Capability(
            "sys", False, f"SUBACK refused $SYS/#: {codes[0] if codes else ''}"
        )
        return
    try:
        first = main.wait_for_message("$SYS/#", timeout=1.0)
    except MQTTTimeout:
        items["sys"] = Capability("sys", False, "no $SYS message within 1 s of subscribing")
        return
    finally:
        main.unsubscribe("$SYS/#")
    items["sys"] = Capability("sys", True, f"first: {first.topic}")


def _probe_shared(
    client: Any,
    main: RecordingClient,
    root: str,
    items: dict[str, Capability],
    connack5: dict[str, Any],
) -> None:
    if connack5.get(ADVERTISED["shared_subscriptions"]) == 0:
        items["shared_subscriptions"] = Capability(
            "shared_subscriptions", False, "CONNACK Shared Subscription Available = 0"
        )
        return
    topic = f"{root}/shared"
    group = f"$share/lab{uuid.uuid4().hex[:6]}/{topic}"
    members = [client("share-a"), client("share-b")]
    for member in members:
        codes = member.subscribe(group, qos=1)
        if not codes or codes[0].is_failure:
            items["shared_subscriptions"] = Capability(
                "shared_subscriptions",
                False,
                f"SUBACK refused {group}: {codes[0] if codes else 'no reason code'}",
            )
            return
    sent = 6
    for n in range(sent):
        main.publish(topic, str(n).encode(), qos=1)
    main.sync()
    for member in members:
        member.sync()
    counts = [len(m.received(topic)) for m in members]
    if sum(counts) == sent:
        detail = f"a group of 2 split {sent} messages {counts[0]}+{counts[1]}"
        items["shared_subscriptions"] = Capability("shared_subscriptions", True, detail)
    elif sum(counts) == 0:
        items["shared_subscriptions"] = Capability(
            "shared_subscriptions",
            False,
            f"SUBACK granted {group}, but no message reached the group's members",
        )
    else:
        items["shared_subscriptions"] = Capability(
            "shared_subscriptions",
            False,
            f"{sent} messages reached a group of 2 as {counts[0]}+{counts[1]} (each once expected)",
        )
