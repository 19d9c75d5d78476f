"""Lesson 06 — Access control: who may publish and subscribe to what.

An open broker forwards anything from anyone to anyone: a prankster's
``stop`` on ``factory/commands/controller/press`` stops the press, and a
stranger subscribed to ``#`` reads the whole plant. MQTT itself says nothing
about *who may do what*; the broker decides, message by message, from its
**access control list** (ACL). Mosquitto reads one from ``acl_file``:

* ``pattern write factory/telemetry/%c/#`` applies to every client, with
  ``%c`` replaced by its **client id** (``%u`` by its user name): each device
  may write under its own id, and only there.
* ``user dashboard`` followed by ``topic read factory/#`` applies to clients
  that connect with that **user name**. ``topic`` lines before any ``user``
  line apply to every client *without* a user name — ``topic read factory/#``
  there gives the whole plant to any stranger.
* Whatever no line allows is **denied**.

How a broker says no (the experiments show it on MQTT 3.1.1 and 5):

* **Publish**: Mosquitto checks ``write`` when the PUBLISH arrives and drops a
  denied one. MQTT 3.1.1 has no way to refuse a PUBLISH (§3.4: a PUBACK has
  no reason code), so a QoS 1 publish is acknowledged as usual and silently
  dropped; MQTT 5 lets the broker answer PUBACK reason code 0x87 "Not
  authorized" (§3.4.2.1) — Mosquitto 2.0 does — or drop it as well. QoS 0
  gets no answer in either version. The broker logs ``Denied PUBLISH from
  <client id> (..., '<topic>', ...)``.
* **Subscribe**: MQTT allows a SUBACK failure (3.1.1 §3.9.3: 0x80; 5
  §3.9.3: 0x87 "Not authorized"), but Mosquitto's ``acl_file`` grants every
  SUBSCRIBE and checks ``read`` each time it would deliver a message: a
  forbidden subscription simply never receives anything, and nothing is
  logged. (Brokers with dynamic-security plugins may refuse in the SUBACK.)
* So "nothing arrived" is the usual evidence, and it proves something only
  with a **witness**: a client that *may* read the topic is subscribed too,
  and a round trip through the broker (``sync()``) shows that nothing more is
  on its way. The lab keeps ``pattern readwrite lab/sync/%c/#`` in every ACL
  for that round trip.

The factory's **permission matrix** (from the seed): a device writes only its
own telemetry, alarms, state and status (the lab's devices also write their
``factory/events/<id>`` diary) and reads only its own commands; the controller
reads alarms and writes commands as ``controller``; the dashboard reads
everything and writes commands as ``dashboard``; the observer reads and never
writes; the bad actor gets nothing. ``MATRIX`` below is that matrix as data;
every cell is one experiment against the solution's ACL. Points follow harm: a cell weighs
by what a wrong verdict exposes (a forged command more than a read reading), ten times more
when the leak is to a client with no right at all, so an ACL that shows the plant to a
stranger costs most of the matrix's points.

Pitfalls:

* ``topic write factory/telemetry/#`` "for the devices" lets every device — and
  everyone else — write every device's readings. Use ``pattern ... %c``.
* ``topic read factory/#`` before any ``user`` line, "for the dashboard", gives
  the bad actor everything too. An ACL file cannot name a client id: rights
  that do not follow the topic tree (the controller reads *all* alarms) belong
  to a user name.
* Trusting names. With client-id rules, **anyone may claim a device's id**
  (and without passwords, a user name): the broker even disconnects the real
  device in favour of the impostor (session takeover). Only authentication
  closes that: ``allow_anonymous false``, a ``password_file`` made with
  ``mosquitto_passwd``, and rules on ``%u`` / ``user`` — the ``hardened``
  variant (``docker/variants/hardened.conf``, ``docker/acl-hardened``).
* Testing only what should work. An ACL is proven by its *denials*, each with
  a witness that would have seen the message.

MQTT 3.1.1 §5.4.2 (authorization), §3.9.3; MQTT 5 §5.4.2, §3.4.2.1, §3.9.3,
§3.2.2.2 (CONNACK 0x86/0x87); mosquitto.conf(5) ``acl_file``,
``password_file``, ``allow_anonymous``; mosquitto_passwd(1).

Try it (the seed's exercise 6), with the broker of ``docker compose up``::

    python -m sim.bad_actor            # tries forbidden publishes and subscribes, with evidence
    docker compose -f docker/docker-compose.yml logs -f mosquitto   # its "Denied PUBLISH" lines
    python -m sim.cli sub --client-id spy --topic 'factory/#'     # a stranger: nothing
    python -m sim.cli sub --client-id spy --username dashboard --topic 'factory/#'  # spoofed!

Your programs in this lesson: ``[files] acl`` in your manifest — a Mosquitto
ACL file, loaded as the broker's ``acl_file`` (topics under ``factory/``; the
lab connects devices with their device id as client id, ``controller``,
``dashboard`` and ``observer`` with that client id *and* user name). Your ACL **must
keep** ``pattern readwrite lab/sync/%c/#`` (the starter's ``acl`` has it): every denial is
proven with a round trip through it, and without it the lesson stops at once, in one
sentence, before any cell runs. ``[roles.device]`` runs under it,
connecting with client id ``{client_id}`` = ``{device_id}`` and topic root
``factory``. Run ``pytest labs/06_acl.py -v``; a platform team checks its own
ACL with ``--acl-file PATH --acl-matrix PATH`` (see ``docs/acl.md``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from mqtt_factory_lab.brokers import CONFIG, LOG, Broker
from mqtt_factory_lab.core.acl import Cell, MatrixClient
from mqtt_factory_lab.core.client import MQTTTimeout
from mqtt_factory_lab.core.process import ProcessTimeout, wait_until
from mqtt_factory_lab.experiment.acl import (
    Parties,
    denied_lines,
    expect,
    how_to_allow,
    probe,
    publish_for_ack,
    refused_login,
    round_trip,
    shown,
    try_publish_cell,
    try_read_cell,
    wait_for_reports,
    why_undelivered,
)
from mqtt_factory_lab.fixtures.acl import parametrize_cells

pytestmark = [pytest.mark.lesson(6)]

#: The factory's permission matrix: [publish] and [subscribe] name, for each topic,
#: the clients that may; every other client is denied. ``--acl-matrix PATH`` replaces it.
MATRIX = """
[clients.press-01]
role = "a device"
[clients.oven-01]
role = "another device"
[clients.controller]
role = "the controller"
username = "controller"
[clients.dashboard]
role = "the dashboard"
username = "dashboard"
[clients.observer]
role = "the observer"
username = "observer"
[clients.bad-actor]
role = "the bad actor"

[publish]
"factory/telemetry/press-01/temperature" = ["press-01"]
"factory/alarms/press-01/temperature" = ["press-01"]
"factory/state/press-01" = ["press-01"]
"factory/status/press-01" = ["press-01"]
"factory/commands/controller/press-01" = ["controller"]
"factory/commands/dashboard/press-01" = ["dashboard"]
"factory/telemetry/oven-01/temperature" = ["oven-01"]
"factory/state/oven-01" = ["oven-01"]
"factory/commands/controller/oven-01" = ["controller"]

[subscribe]
"factory/telemetry/press-01/temperature" = ["dashboard", "observer"]
"factory/alarms/press-01/temperature" = ["dashboard", "observer", "controller"]
"factory/state/press-01" = ["dashboard", "observer"]
"factory/status/press-01" = ["dashboard", "observer"]
"factory/commands/controller/press-01" = ["dashboard", "observer", "press-01"]
"factory/commands/dashboard/press-01" = ["dashboard", "observer", "press-01"]
"factory/telemetry/oven-01/temperature" = ["dashboard", "observer"]
"factory/state/oven-01" = ["dashboard", "observer"]
"factory/commands/controller/oven-01" = ["dashboard", "observer", "oven-01"]
"""

DASHBOARD = MatrixClient("dashboard", "the dashboard", username="dashboard")
NOT_AUTHORIZED = 0x87  # MQTT 5 reason code 135


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_cells(metafunc, MATRIX)


# The parties, the cells' proofs and the verdicts' wording live in
# mqtt_factory_lab.experiment.acl; the brokers (acl_broker, lab_acl, hardened) are
# fixtures of mqtt_factory_lab.fixtures.acl.


# -- the permission matrix, cell by cell, against the solution's ACL ------------------
# An ACL decides by client id, user name and topic, never by protocol version, so the cells
# run on MQTT 5 (whose PUBACK can say 0x87); the broker experiments further down show how
# each version says no. One broker per module loads the ACL; each cell tells its own
# messages apart by a unique payload.


@pytest.mark.solution
@pytest.mark.broker_needs(CONFIG)
@pytest.mark.points(2.5)
def test_matrix_says_who_may_publish_where(
    publish_cell: Cell, acl_broker: Broker, mqtt_client, acl_file: Path
):
    cell = publish_cell
    tried = try_publish_cell(cell, Parties(mqtt_client, acl_broker), acl_broker)
    payload, answer, got = tried.payload, tried.answer, tried.got
    who, seen_by = cell.client.describe(), cell.witness.client_id

    if cell.allowed:
        expect(
            payload in got,
            f"Permission matrix: {who} may publish to {cell.topic}, but its message never "
            f"reached {seen_by}, who may read it{why_undelivered(cell, tried)} (ACL: "
            f"{shown(acl_file)})",
        )
        return
    expect(
        tried.control in got,
        f"This cell proves nothing yet: {cell.control.describe() if cell.control else '?'}, who "
        f"may publish to {cell.topic}, could not reach {seen_by} either. Fix the cells that "
        f"allow them first.",
    )
    expect(
        payload not in got,
        f"Permission matrix: {who} may NOT publish to {cell.topic}, yet {seen_by} received its "
        f"message: the ACL ({shown(acl_file)}) lets it write there. A `topic write` line before any "
        "`user` line applies to every client without a user name, and a `pattern` line to every "
        f"client: narrow the rule that matches {cell.topic} (a device: `pattern write "
        "factory/telemetry/%c/#`, never `topic write factory/telemetry/#`).",
    )
    expect(
        not answer.is_failure or answer.value == NOT_AUTHORIZED,
        "A denied publish answered with a reason code must say 0x87 Not authorized; got MQTT 5 "
        f"PUBACK {answer.value:#04x} ({answer}).",
    )


@pytest.mark.solution
@pytest.mark.broker_needs(CONFIG)
@pytest.mark.points(2.5)
def test_matrix_says_who_may_read_what(
    subscribe_cell: Cell, acl_broker: Broker, mqtt_client, acl_file: Path
):
    cell = subscribe_cell
    tried = try_read_cell(cell, Parties(mqtt_client, acl_broker), acl_broker)
    payload, suback, got, refused = tried.payload, tried.suback, tried.got, tried.refused
    who, writer = cell.client.describe(), cell.witness.client_id
    expect(
        not refused and not tried.answer.is_failure,
        f"This cell proves nothing yet: {cell.witness.describe()}, who may publish to "
        f"{cell.topic}, was denied ({refused[0] if refused else tried.answer}); fix its publish cell "
        f"first. (ACL: {shown(acl_file)})",
    )

    if cell.allowed:
        expect(
            payload in got,
            f"Permission matrix: {who} may read {cell.topic}, but the message {writer} published "
            f"there never reached it"
            + (f" (SUBACK {suback.value:#04x} {suback})" if suback.is_failure else "")
            + f": the ACL ({shown(acl_file)}) denies the read. Add "
            f"{how_to_allow(cell.client, 'read', cell.topic)}.",
        )
        return
    if suback.is_failure:
        return  # refused in the SUBACK: the broker said no at once
    control = tried.control
    assert control is not None
    round_trip(control)
    expect(
        payload in {m.payload for m in control.received(cell.topic)},
        f"This cell proves nothing yet: the message {writer} published to {cell.topic} did not "
        f"reach {control.client_id}, who may read it, either. Fix the cells that allow them first.",
    )
    expect(
        payload not in got,
        f"Permission matrix: {who} may NOT read {cell.topic}, yet it received the message "
        f"{writer} published there: the ACL ({shown(acl_file)}) lets it read. Mosquitto's acl_file "
        "grants every SUBSCRIBE and checks `read` at each delivery, so that check is all that "
        "protects the topic. A `topic read` line before any `user` line (such as `topic read "
        "factory/#`) gives every client without a user name everything: move it under the "
        "`user` that needs it.",
    )


# -- the solution's factory under its own ACL ------------------------------------------


@pytest.mark.solution
@pytest.mark.broker_needs(CONFIG, LOG)
@pytest.mark.points(1)
def test_solution_devices_need_nothing_their_acl_denies(
    make_broker, factory_launcher, mqtt_client, acl_file, protocol
):
    broker = make_broker("acl", acl_file=acl_file)
    dashboard = Parties(mqtt_client, broker)(DASHBOARD, protocol)
    dashboard.subscribe("factory/#", qos=1)
    round_trip(dashboard)
    mark = broker.log_mark()
    launcher = factory_launcher(broker, root="factory", protocol=protocol)
    # As in production: each device's client id is its device id, which the ACL's %c expects.
    devices = [
        launcher.start_device(kind, f"{kind}-01", client_id=f"{kind}-01", wait_online=False)
        for kind in ("press", "oven")
    ]
    for handle in devices:
        wait_for_reports(dashboard, handle.device_id, acl_file)
    press = devices[0]
    commands, state = f"factory/commands/dashboard/{press.device_id}", press.topic("state")
    # A command the device must read, and one it must reject (a misspelled field): it answers
    # with its state, and with an entry in its events diary, both under its own id.
    dashboard.publish(commands, {"command": "stop", "reason": "lesson 06"}, qos=1)
    dashboard.wait_for_message(
        lambda m: m.topic == state and m.json().get("state") == "stopped",
        timeout=5,
        why=f"The press never reported 'stopped' on {state} after the dashboard's stop on "
        f"{commands}: a device reads the commands addressed to it (its ACL must let it).",
    )
    dashboard.publish(commands, {"command": "start", "reasn": "typo"}, qos=1)
    with contextlib.suppress(MQTTTimeout):  # a device may not count it; a denial shows in the log
        dashboard.wait_for_message(
            lambda m: (
                m.topic == state and m.json().get("counters", {}).get("commands_rejected", 0) > 0
            ),
            timeout=3,
        )
    round_trip(dashboard)

    denied = denied_lines(broker, mark, (d.client_id for d in devices))
    expect(
        not denied,
        f"The solution's devices tried what their own ACL ({shown(acl_file)}) denies, so part of "
        "their work is lost (MQTT 5 answers 0x87, 3.1.1 drops it silently). Either the ACL "
        "lacks a rule the device needs, or the device publishes outside its own topics:\n"
        + "\n".join(f"    {line}" for line in denied[:8]),
    )


# -- how the broker says no (the lab's docker/acl) -------------------------------------


@pytest.mark.broker
@pytest.mark.broker_needs(CONFIG)
@pytest.mark.parametrize("qos", [0, 1], ids=lambda q: f"qos{q}")
@pytest.mark.spec(mqtt311=["MQTT-3.3.5-2"])
@pytest.mark.rule("must")
def test_denied_publish_is_refused_or_dropped_never_delivered(lab_acl, mqtt_client, protocol, qos):
    party = Parties(mqtt_client, lab_acl)
    press, oven = MatrixClient("press-01"), MatrixClient("oven-01")
    topic = "factory/state/oven-01"
    dashboard = party(DASHBOARD, protocol)
    dashboard.subscribe(topic, qos=1)
    forged, genuine = probe(press, "forged state"), probe(oven, "state")

    answer = publish_for_ack(party(press, protocol), topic, forged, qos)
    party(oven, protocol).publish(topic, genuine, qos=1)
    round_trip(dashboard)
    got = [m.payload for m in dashboard.received(topic)]

    expect(genuine in got, f"oven-01 may write {topic}: the dashboard must get its message.")
    expect(
        forged not in got,
        f"press-01 may not write {topic} (another device's state), so the broker must drop its "
        f"PUBLISH; the dashboard received it (MQTT {protocol}, QoS {qos}).",
    )
    if protocol == "5" and qos == 1:
        expect(
            answer.value in (0, NOT_AUTHORIZED),
            "An MQTT 5 broker may answer a denied QoS 1 PUBLISH with PUBACK 0x87 Not authorized "
            f"(Mosquitto 2.0 does) or accept and drop it; it answered {answer.value:#04x} {answer}.",
        )
    else:
        expect(
            not answer.is_failure,
            f"MQTT {protocol} at QoS {qos} has no way to refuse a PUBLISH: "
            + (
                "the PUBACK carries no reason code"
                if qos
                else "QoS 0 gets no answer at all; the drop is silent"
            )
            + f", yet paho reported {answer}.",
        )


@pytest.mark.broker
@pytest.mark.broker_needs(CONFIG)
@pytest.mark.rule("convention")  # the lab's ACL
def test_forbidden_subscription_is_refused_or_receives_nothing(lab_acl, mqtt_client, protocol):
    party = Parties(mqtt_client, lab_acl)
    stranger = party(MatrixClient("bad-actor"), protocol)
    codes = stranger.subscribe("factory/#", qos=1)
    dashboard = party(DASHBOARD, protocol)
    dashboard.subscribe("factory/#", qos=1)
    press = MatrixClient("press-01")
    reading = probe(press, "telemetry")
    party(press, protocol).publish("factory/telemetry/press-01/temperature", reading, qos=1)
    round_trip(dashboard)
    round_trip(stranger)

    expect(
        reading in [m.payload for m in dashboard.received()],
        ("The dashboard may read everything: it must get press-01's reading."),
    )
    if codes[0].is_failure:
        expect(
            codes[0].value in (0x80, NOT_AUTHORIZED),
            f"A refused subscription says 0x80 (3.1.1) or 0x87 Not authorized (5); got {codes[0]}",
        )
    stranger.assert_nothing_received(
        "factory/#",
        why="A client without rights may subscribe to factory/# (Mosquitto's acl_file grants "
        "every SUBSCRIBE), but the broker checks `read` at each delivery and must send it nothing.",
    )


@pytest.mark.broker
@pytest.mark.broker_needs(CONFIG, LOG)
@pytest.mark.rule("convention")  # the lab's ACL and log
def test_broker_logs_every_denied_publish(lab_acl, mqtt_client):
    press = mqtt_client("press-01", broker=lab_acl)
    mark = lab_acl.log_mark()
    topic = "factory/commands/controller/press-01"
    press.publish(topic, b'{"command": "start"}', qos=1)
    line = lab_acl.wait_for_log(rf"Denied PUBLISH from press-01 \(.*'{topic}'", since=mark)
    expect("q1" in line, f"The log line gives the QoS of the denied publish: {line}")


# -- the weakness: names are claimed, not proven ----------------------------------------


@pytest.mark.broker
@pytest.mark.broker_needs(CONFIG)
@pytest.mark.rule("convention")  # the lab's ACL
def test_anyone_may_claim_a_device_client_id(lab_acl, mqtt_client, protocol):
    topic = "factory/telemetry/press-01/temperature"
    dashboard = mqtt_client("dashboard", username="dashboard", broker=lab_acl, protocol=protocol)
    dashboard.subscribe(topic, qos=1)
    genuine = mqtt_client("press-01", broker=lab_acl, protocol=protocol)
    genuine.paho.reconnect_delay_set(min_delay=0.2, max_delay=0.2)  # lets teardown be quick

    impostor = mqtt_client("press-01", broker=lab_acl, protocol=protocol)
    forged = probe(MatrixClient("press-01"), "forged reading from the impostor")
    impostor.publish(topic, forged, qos=1)
    dashboard.wait_for_message(
        lambda m: m.payload == forged,
        why="With client-id rules the broker believes any client that says it is press-01: the "
        "impostor's reading must reach the dashboard (this experiment shows the weakness).",
    )
    with contextlib.suppress(ProcessTimeout):
        wait_until(lambda: genuine.disconnects, timeout=3)
    genuine.paho.disconnect()  # paho would reconnect and take the session back
    expect(
        genuine.disconnects,
        "A second connection with the same client id takes the session over (MQTT §3.1.4): "
        "the broker must disconnect the genuine press-01 in favour of the impostor.",
    )


@pytest.mark.broker
@pytest.mark.broker_needs(CONFIG)
@pytest.mark.rule("convention")  # the lab's ACL
def test_without_passwords_anyone_may_claim_the_dashboard_user(lab_acl, mqtt_client, protocol):
    spy = mqtt_client("spy", username="dashboard", broker=lab_acl, protocol=protocol)
    spy.subscribe("factory/#", qos=1)
    press = mqtt_client("press-01", broker=lab_acl, protocol=protocol)
    press.publish("factory/state/press-01", probe(MatrixClient("press-01"), "state"), qos=1)
    spy.wait_for_message(
        "factory/state/press-01",
        why="The acl variant has no password file: a user name is as easy to claim as a client "
        "id, so the spy calling itself 'dashboard' reads the plant (this shows the weakness).",
    )


@pytest.mark.broker
@pytest.mark.broker_needs(CONFIG)
@pytest.mark.parametrize("credentials", ["anonymous", "wrong-password"])
@pytest.mark.rule("convention")  # the lab's hardened ACL
def test_hardened_broker_refuses_clients_that_cannot_prove_who_they_are(
    hardened, mqtt_client, protocol, credentials
):
    broker, _ = hardened
    login = {"username": "press-01", "password": "guess"} if credentials == "wrong-password" else {}
    impostor = mqtt_client("press-01", broker=broker, protocol=protocol, connect=False, **login)
    code = refused_login(impostor)  # paho reports 3.1.1's return codes 4, 5 as 0x86, 0x87
    wire = {"5": "0x86 or 0x87", "3.1.1": "return code 4 or 5"}[protocol]
    expect(
        code.value in (0x86, NOT_AUTHORIZED),
        f"With `allow_anonymous false` and a password file, a client with "
        f"{'no user name' if credentials == 'anonymous' else 'a wrong password'} must be refused "
        f"in the CONNACK (MQTT {protocol}: {wire}, bad user name or password / not "
        f"authorized); got {code.value:#x} {code}.",
    )


@pytest.mark.broker
@pytest.mark.broker_needs(CONFIG, LOG)
@pytest.mark.rule("convention")  # the lab's hardened ACL
def test_hardened_rights_follow_the_user_not_the_client_id(hardened, mqtt_client, protocol):
    broker, passwords = hardened
    topic = "factory/telemetry/press-01/temperature"

    def log_in(client_id: str, user: str):
        return mqtt_client(
            client_id, broker=broker, protocol=protocol, username=user, password=passwords[user]
        )

    dashboard = log_in("dash", "dashboard")
    dashboard.subscribe(topic, qos=1)
    genuine = log_in("press-01", "press-01")
    reading = probe(MatrixClient("press-01"), "genuine reading")
    genuine.publish(topic, reading, qos=1)
    dashboard.wait_for_message(
        lambda m: m.payload == reading,
        why="The genuine press-01 logged in as user press-01 may write its telemetry (%u).",
    )
    genuine.disconnect()

    # The impostor has an account (the observer's) and claims the device's client id.
    mark = broker.log_mark()
    impostor = log_in("press-01", "observer")
    forged = probe(MatrixClient("press-01"), "forged reading")
    impostor.publish(topic, forged, qos=1)
    round_trip(dashboard)
    expect(
        forged not in [m.payload for m in dashboard.received(topic)],
        "In the hardened broker every right belongs to the authenticated user (%u), not the "
        "client id: the observer's account connecting as client id press-01 must not write "
        f"press-01's telemetry, yet the dashboard received it on {topic}.",
    )
    broker.wait_for_log(rf"Denied PUBLISH from press-01 \(.*'{topic}'", since=mark)
