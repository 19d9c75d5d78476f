"""Lesson 08 — Identity and encryption: TLS, client certificates and per-machine ACLs.

Lesson 06 ended with a door left open: an ACL that trusts client ids and user names trusts
whatever a client *claims*, and a device using ``press-01``'s client id writes press-01's
telemetry. The chocolate factory's "next improvements" begin with closing it, the way a
real plant does: **TLS** (Transport Layer Security) under MQTT, and **certificates** that
prove who is at each end.

* **Encryption and the broker's identity** (variant ``tls``). The broker's listener speaks
  TLS only; in the handshake the broker presents a certificate — "I am 127.0.0.1", signed by
  a certificate authority (CA). The client *verifies* it against the CA it was given
  (``VF_TLS_CA``): signed by that CA, valid today, made out to the host it dialled. If any
  check fails the client must hang up **before sending anything**: the other end may be a
  man in the middle collecting passwords and forging commands. Switching verification off
  (``tls_insecure_set(True)``, ``cert_reqs=CERT_NONE``) "fixes" the error by letting
  anybody in the middle.
* **The client's identity** (variant ``mtls``, mutual TLS). With ``require_certificate
  true`` the broker asks every client for a certificate signed by *its* CA (``cafile``) and
  refuses, in the handshake, a client with none or with a stranger's. With
  ``use_identity_as_username true`` the certificate's Common Name (``CN=press-01``) becomes
  the client's user name: a name the CA vouched for, that the client cannot choose. The
  user name in the CONNECT is ignored, and the client id decides nothing.
* **Per-machine ACLs** (``docker/acl-machines``). Rules on ``%u`` and ``user`` lines now
  follow the certificate: each machine writes only its own telemetry, alarms, state and
  status and reads only its own commands; ``controller``, ``dashboard``, ``observer`` and
  ``datacenter`` have their own certificates and rights. The lab's sync scratch space stays
  on ``%c`` (it carries no factory data).

Where each failure happens, so that it is named for what it is:

======================================  =========================================  ==========
what went wrong                         who says no, and when                      it is
======================================  =========================================  ==========
the broker's cert is from another CA    the *client*, in the handshake             TLS
the broker's cert expired / wrong host  the *client*, in the handshake             TLS
no client cert, or one from another CA  the *broker*, in (or right after) it       TLS
a plaintext client on the TLS port      the broker drops the garbage               TLS
the certificate's identity may not      the broker's ACL, per PUBLISH / delivery   ACL
write there                             (``Denied PUBLISH``, 0x87)
======================================  =========================================  ==========

A TLS failure is never "not authorized": no MQTT packet was exchanged. An ACL denial is
never a certificate problem: the connection was fine.

Pitfalls:

* Turning verification off to get past "certificate verify failed". Give the right CA.
* A client certificate without ``use_identity_as_username``: the broker checks the
  certificate, but the ACL still trusts the claimed client id and user name.
* ``pattern write factory/#`` (or ``topic write factory/#`` under every ``user``) "so that
  the machines work": every certificate then writes everywhere, and identity buys nothing.
* Testing with a certificate for ``localhost`` and connecting to ``127.0.0.1`` (or the
  other way round): the host name check is part of verification.

MQTT 3.1.1 §5.4.5 and MQTT 5 §5.4.5 (the protocol leaves security to TLS); §5.4.2 and
MQTT-3.3.5-2 (authorization); mosquitto.conf(5) ``cafile``, ``certfile``, ``keyfile``,
``require_certificate``, ``use_identity_as_username``; ``docs/tls.md`` (the same
certificates with ``openssl``).

Try it (``docs/tls.md`` has the broker's ``mtls.conf`` and the same files with ``openssl``)::

    python -m mqtt_factory_lab.certificates certs/     # a test CA and a certificate per machine
    mosquitto -c mtls.conf &                           # TLS on 8883, require_certificate
    python -m sim.run_all --mtls certs/ --host 127.0.0.1 --port 8883
    mosquitto_sub -h 127.0.0.1 -p 8883 --cafile certs/ca.crt -t 'factory/#' -v   # refused: why?
    openssl s_client -connect 127.0.0.1:8883 -CAfile certs/ca.crt   # the handshake, step by step

Your programs in this lesson: ``[roles.device]`` and ``[roles.controller]`` connect with TLS
when ``VF_TLS_CA`` is set: they verify the broker against that CA, present ``VF_TLS_CERT``
and ``VF_TLS_KEY`` (the lab gives each machine its own: ``CN`` = its device id, or
``controller``), and refuse — without publishing anything, and saying why — a broker whose
certificate they cannot verify. ``[files] acl_machines`` is your per-machine ACL, loaded
by an ``mtls`` broker. Run ``pytest labs/08_tls.py -v``.
"""

from __future__ import annotations

import contextlib
import uuid

import pytest

from mqtt_factory_lab.brokers import CONFIG, LOG
from mqtt_factory_lab.core.client import RecordingClient
from mqtt_factory_lab.core.connection import ConnectionSettings, try_connect
from mqtt_factory_lab.core.factory import FactoryLauncher
from mqtt_factory_lab.core.process import ProcessTimeout, wait_until
from mqtt_factory_lab.core.tls_probe import TLS_FAILURES, probe_tls
from mqtt_factory_lab.experiment.acl import denied_lines, expect, shown
from mqtt_factory_lab.experiment.tls import (
    client_ids_logged,
    connect_together,
    identities_logged,
    probe,
    round_trip,
    says_why,
    start_or_fail,
)
from mqtt_factory_lab.fixtures.factory import or_fail

pytestmark = [pytest.mark.lesson(8), pytest.mark.broker_needs(CONFIG, LOG)]

#: the topics of the per-machine matrix, and the one identity that owns (writes) each
OWNER = {
    "factory/telemetry/press-01/temperature": "press-01",
    "factory/alarms/press-01/temperature": "press-01",
    "factory/state/press-01": "press-01",
    "factory/status/press-01": "press-01",
    "factory/telemetry/oven-01/temperature": "oven-01",
    "factory/state/oven-01": "oven-01",
    "factory/commands/controller/press-01": "controller",
    "factory/commands/dashboard/press-01": "dashboard",
}
#: what each certificate may read of those topics
MAY_READ = {
    "press-01": {"factory/commands/controller/press-01", "factory/commands/dashboard/press-01"},
    "oven-01": set(),
    "controller": {"factory/alarms/press-01/temperature"},
    "dashboard": set(OWNER),
    "observer": set(OWNER),
    "datacenter": set(OWNER),
}
IDENTITIES = list(MAY_READ)
# The instruments (the broker log's identities, probes, refusals in words) live in
# mqtt_factory_lab.experiment.tls; the brokers (tls_broker, machines_broker,
# solution_machines, dedicated_broker, impostor_broker) and clients (tls_client,
# machine_launcher) are fixtures of mqtt_factory_lab.fixtures.tls.


# -- what TLS promises (the lab's broker files) ----------------------------------------


@pytest.mark.broker
@pytest.mark.rule("convention")  # the lab's tls/mtls variants: TLS is no MQTT statement
def test_plaintext_client_gets_nothing_from_a_tls_listener(tls_broker, protocol):
    plain = ConnectionSettings(tls_broker.host, tls_broker.port)
    outcome, _ = try_connect(plain, protocol, timeout=2)
    expect(
        not outcome.accepted,
        "The tls variant's only listener speaks TLS: a plaintext MQTT CONNECT must get no "
        f"CONNACK at all, yet the broker accepted it ({outcome.sentence()}).",
    )
    expect(
        outcome.reason_code is None,
        "A plaintext client on a TLS port never reaches MQTT: the broker must not answer with "
        f"a CONNACK (a refusal such as 'not authorized' would be MQTT); got {outcome.sentence()}",
    )


@pytest.mark.broker
@pytest.mark.rule("convention")  # the lab's tls/mtls variants: TLS is no MQTT statement
def test_client_that_trusts_another_ca_refuses_the_broker(tls_broker, lab_certificates):
    stranger_ca = lab_certificates.other_ca().ca_file
    found = probe_tls(tls_broker.host, tls_broker.port, ca=stranger_ca)
    expect(
        found.kind == "unknown_ca",
        "A client verifies the broker's certificate against the CA it trusts: trusting "
        "another CA, it must refuse the broker in the handshake (unknown CA), before any "
        f"MQTT packet; instead: {found.sentence}",
    )
    genuine = probe_tls(tls_broker.host, tls_broker.port, ca=lab_certificates.ca_file)
    expect(
        genuine.accepted,
        f"With the right CA the same client must get in (the control): {genuine.sentence}",
    )


@pytest.mark.broker
@pytest.mark.rule("convention")  # the lab's tls/mtls variants: TLS is no MQTT statement
@pytest.mark.parametrize("flaw", ["expired", "wrong-host"])
def test_client_refuses_an_expired_or_wrong_host_server_certificate(
    dedicated_broker, lab_certificates, flaw
):
    bad = (
        lab_certificates.expired_server()
        if flaw == "expired"
        else lab_certificates.wrong_host_server()
    )
    broker = dedicated_broker("tls", server_certificate=bad)
    found = probe_tls(broker.host, broker.port, ca=lab_certificates.ca_file)
    kind = {"expired": "expired", "wrong-host": "hostname"}[flaw]
    check = {
        "expired": "the certificate is valid today",
        "wrong-host": "the certificate is made out to the host the client dialled (127.0.0.1)",
    }[flaw]
    expect(
        found.kind == kind,
        f"Signed by the right CA is not enough: verification also checks that {check}. The "
        f"broker's certificate ({bad.name}) fails that check, so the client must refuse it "
        f"({kind}); instead: {found.sentence}",
    )


@pytest.mark.broker
@pytest.mark.rule("convention")  # the lab's tls/mtls variants: TLS is no MQTT statement
@pytest.mark.parametrize("presented", ["no-certificate", "other-ca-certificate"])
def test_mtls_refuses_clients_without_a_certificate_from_its_ca(
    machines_broker, lab_certificates, presented
):
    pair = lab_certificates.other_ca().client("press-01") if presented != "no-certificate" else None
    found = probe_tls(
        machines_broker.host,
        machines_broker.port,
        ca=lab_certificates.ca_file,
        cert=pair.cert if pair else None,
        key=pair.key if pair else None,
    )
    expected = "cert_required" if pair is None else "client_unknown_ca"
    expect(
        found.kind == expected,
        "Under `require_certificate true` the broker checks the client's certificate against "
        "its cafile in the TLS handshake: a client "
        + ("without one" if pair is None else "whose certificate another CA signed")
        + f" must be refused there ({expected}), before any MQTT packet; instead: "
        + found.sentence,
    )
    expect(
        found.kind in TLS_FAILURES,
        f"A TLS refusal is not an MQTT one: no CONNACK (such as 'not authorized') may come; "
        f"{found.sentence}",
    )


@pytest.mark.broker
@pytest.mark.rule("convention")  # the lab's tls/mtls variants: TLS is no MQTT statement
def test_identity_as_username_the_broker_logs_the_certificate_name(machines_broker, tls_client):
    mark = machines_broker.log_mark()
    client = tls_client(
        "press-01", broker=machines_broker, client_id=f"any-id-{uuid.uuid4().hex[:6]}"
    )
    with contextlib.suppress(ProcessTimeout):
        wait_until(lambda: client.client_id in identities_logged(machines_broker, mark), timeout=5)
    user = identities_logged(machines_broker, mark).get(client.client_id)
    expect(
        user == "press-01",
        "With `use_identity_as_username true` the broker takes the user name from the "
        f"certificate's Common Name (CN=press-01); its log shows u'{user}' for "
        f"{client.client_id}.",
    )


@pytest.mark.broker
@pytest.mark.spec(mqtt311=["MQTT-3.3.5-2"])
@pytest.mark.rule("must")
def test_the_spoof_of_lesson_06_fails_the_certificate_decides(
    machines_broker, tls_client, protocol
):
    topic = "factory/telemetry/press-01/temperature"
    dashboard = tls_client("dashboard", broker=machines_broker, protocol=protocol)
    dashboard.subscribe(topic, qos=1)
    round_trip(dashboard)
    mark = machines_broker.log_mark()
    # oven-01 claims press-01's client id, and the dashboard's user name, as in lesson 06.
    impostor = tls_client(
        "oven-01",
        broker=machines_broker,
        client_id="press-01",
        protocol=protocol,
        username="dashboard",
    )
    forged = probe("oven-01", "forged reading as press-01")
    impostor.publish(topic, forged, qos=1)
    genuine = tls_client("press-01", broker=machines_broker, protocol=protocol)
    reading = probe("press-01", "genuine reading")
    genuine.publish(topic, reading, qos=1)
    round_trip(dashboard)
    got = [m.payload for m in dashboard.received(topic)]
    expect(
        reading in got,
        f"press-01, with its own certificate and any client id, may write {topic} (the control).",
    )
    expect(
        forged not in got,
        "Under mtls with identity-as-username the certificate decides, not the claimed client "
        "id or user name: oven-01's certificate connecting as client id press-01 (user name "
        f"'dashboard') must not write {topic}, yet the dashboard received it.",
    )
    who = identities_logged(machines_broker, mark).get("press-01")
    expect(
        who == "oven-01",
        "The broker's log must name the certificate's identity for the impostor "
        f"(u'oven-01'), whatever user name it sent; it logged u'{who}'.",
    )
    machines_broker.wait_for_log(rf"Denied PUBLISH from press-01 \(.*'{topic}'", since=mark)


# -- the solution's per-machine ACL, certificate by certificate ------------------------


@pytest.mark.solution
@pytest.mark.parametrize("identity", IDENTITIES)
def test_acl_machines_lets_each_certificate_write_only_its_own_topics(
    identity, solution_machines, tls_client, acl_machines_file
):
    witness = tls_client("observer", broker=solution_machines, connect=False)
    subject = tls_client(identity, broker=solution_machines, connect=False)
    connect_together(witness, subject)
    witness.subscribe("factory/#", qos=1)
    round_trip(witness)
    sent = {topic: probe(identity, f"write {topic}") for topic in OWNER}
    for topic, payload in sent.items():
        subject.publish(topic, payload, qos=1)
    round_trip(witness)
    got = {m.payload for m in witness.received()}
    own = {topic for topic, owner in OWNER.items() if owner == identity}
    lost = [t for t in own if sent[t] not in got]
    leaked = [t for t in OWNER if t not in own and sent[t] in got]
    expect(
        not leaked,
        f"Per-machine ACL: the certificate CN={identity} may NOT write "
        + ", ".join(leaked)
        + f", yet the observer received what it published there: the ACL "
        f"({shown(acl_machines_file)}) lets any certificate write where only one may. Tie each "
        "write to the identity: `pattern write factory/telemetry/%u/#` (…alarms, state, status) "
        "for the machines, `topic write factory/commands/controller/#` under `user "
        "controller`; never `pattern write factory/#`.",
    )
    expect(
        not lost,
        f"Per-machine ACL: the certificate CN={identity} may write "
        + ", ".join(lost)
        + " (its own topics), but the observer, who reads everything, never got them: the "
        f"ACL ({shown(acl_machines_file)}) denies the write (the broker's log below shows "
        "`Denied PUBLISH`), or the observer's read. Add the rule on %u (or under "
        f"`user {identity}`).",
    )


@pytest.mark.solution
@pytest.mark.parametrize("identity", IDENTITIES)
def test_acl_machines_lets_each_certificate_read_only_what_it_needs(
    identity, solution_machines, tls_client, acl_machines_file
):
    def client(who: str) -> RecordingClient:
        return tls_client(who, broker=solution_machines, connect=False)

    subject = client(identity)
    witness = subject if identity == "observer" else client("observer")
    writers = {owner: client(owner) for owner in dict.fromkeys(OWNER.values())}
    connect_together(subject, witness, *writers.values())
    for reader in {subject, witness}:
        reader.subscribe("factory/#", qos=1)
    round_trip(subject)
    round_trip(witness)
    sent = {}
    for topic, owner in OWNER.items():
        sent[topic] = probe(owner, f"for {identity}")
        writers[owner].publish(topic, sent[topic], qos=1)
    round_trip(witness)
    round_trip(subject)
    seen = {m.payload for m in witness.received()}
    missing = [t for t in OWNER if sent[t] not in seen]
    expect(
        not missing,
        "This experiment proves nothing yet: the observer (who may read everything) did not "
        f"get the owners' messages on {', '.join(missing)}; fix the write experiments first.",
    )
    got = {m.payload for m in subject.received()}
    leaked = [t for t in OWNER if t not in MAY_READ[identity] and sent[t] in got]
    lost = [t for t in MAY_READ[identity] if sent[t] not in got]
    expect(
        not leaked,
        f"Per-machine ACL: the certificate CN={identity} may NOT read {', '.join(leaked)}, "
        f"yet it received those messages: the ACL ({shown(acl_machines_file)}) lets it read. "
        "A machine reads only its own commands (`pattern read factory/commands/controller/%u`).",
    )
    expect(
        not lost,
        f"Per-machine ACL: the certificate CN={identity} may read {', '.join(lost)}, but "
        f"received nothing there: the ACL ({shown(acl_machines_file)}) denies it.",
    )


# -- the solution's programs under mutual TLS -------------------------------------------


@pytest.mark.solution
def test_solution_machines_connect_with_their_certificates_and_keep_to_their_topics(
    dedicated_broker, machine_launcher, tls_client, acl_machines_file, protocol
):
    broker = dedicated_broker("mtls+acl", acl_file=acl_machines_file)
    dashboard = tls_client("dashboard", broker=broker, protocol=protocol)
    dashboard.subscribe("factory/#", qos=1)
    round_trip(dashboard)
    mark = broker.log_mark()
    launcher: FactoryLauncher = machine_launcher(broker, protocol=protocol)
    # the three programs start together: each waits on its own TLS handshake, not the others'
    devices = [
        start_or_fail(
            lambda kind=kind: launcher.start_device(kind, f"{kind}-01", wait_online=False),
            f"the {kind}",
            broker,
            mark,
        )
        for kind in ("press", "oven")
    ]
    start_or_fail(
        lambda: launcher.start_role("controller", "controller", session="clean"),
        "the controller",
        broker,
        mark,
    )
    for device in devices:
        start_or_fail(lambda d=device: launcher.wait_online(d), f"the {device.kind}", broker, mark)
    press = devices[0]
    commands, state = f"factory/commands/dashboard/{press.device_id}", press.topic("state")
    dashboard.publish(commands, {"command": "stop", "reason": "lesson 08"}, qos=1)
    dashboard.wait_for_message(
        lambda m: m.topic == state and m.json().get("state") == "stopped",
        timeout=5,
        why=f"The press never reported 'stopped' on {state} after the dashboard's stop on "
        f"{commands}: with its certificate (CN={press.device_id}) it reads the commands "
        "addressed to it, and writes its own state.",
    )
    round_trip(dashboard)
    logged = identities_logged(broker, mark)
    expected = {d.client_id: d.device_id for d in devices} | {"controller": "controller"}
    wrong = {
        cid: (want, logged.get(cid)) for cid, want in expected.items() if logged.get(cid) != want
    }
    expect(
        not wrong,
        "Each program presents its own certificate, whose CN the broker takes as user name: "
        + "; ".join(
            f"{cid} should be u'{want}', the log shows {got!r}"
            for cid, (want, got) in wrong.items()
        ),
    )
    denied = denied_lines(broker, mark, expected)
    expect(
        not denied,
        f"The solution's machines tried what the per-machine ACL ({shown(acl_machines_file)}) "
        "denies their certificates, so part of their work is lost: either the ACL lacks a "
        "rule on %u, or a program publishes outside its own topics:\n"
        + "\n".join(f"    {line}" for line in denied[:8]),
    )


@pytest.mark.solution
@pytest.mark.parametrize("role", ["device", "controller"])
def test_solution_refuses_a_broker_it_cannot_verify(
    role, impostor_broker, machine_launcher, mqtt_client
):
    spy = mqtt_client(broker=impostor_broker)  # trusts the impostor's own CA
    spy.subscribe("factory/#", qos=1)
    mark = impostor_broker.log_mark()
    launcher: FactoryLauncher = machine_launcher(impostor_broker)
    if role == "device":
        handle = or_fail(lambda: launcher.start_device("press", "press-01", wait_online=False))
        process, client_id = handle.process, handle.client_id
    else:
        process = or_fail(
            lambda: launcher.start_role(
                "controller", "controller", session="clean", wait_ready=False
            )
        )
        client_id = "controller"

    def connected() -> bool:
        return client_id in client_ids_logged(impostor_broker, mark)

    def settled() -> bool:
        return connected() or not process.is_running() or says_why(process.output())

    with contextlib.suppress(ProcessTimeout):
        wait_until(settled, timeout=8)
    if not connected():
        # it may still be on its way in: give the round trip through the spy's session time
        round_trip(spy)
    output = process.output()
    published = [m.topic for m in spy.received()]
    who = f"the solution's {role} ({client_id})"
    expect(
        not connected() and not published,
        f"{who} connected to a man-in-the-middle broker whose certificate another CA signed"
        + (f" and published {len(published)} messages to it ({published[0]}…)" if published else "")
        + ": it does not verify the broker's certificate against VF_TLS_CA. Verify it — "
        "client.tls_set(ca_certs=os.environ['VF_TLS_CA'], certfile=..., keyfile=...) — and "
        "never call tls_insecure_set(True) or use cert_reqs=ssl.CERT_NONE.",
    )
    expect(
        says_why(output),
        f"{who} rightly refused the impostor broker, but did not say why: a machine that "
        "stays silent leaves the operator guessing. Print one line naming the check that "
        "failed (the broker's certificate could not be verified against VF_TLS_CA).\n"
        f"  its output:\n" + "\n".join("    " + line for line in output.splitlines()[-8:]),
    )
    expect(
        "Traceback (most recent call last)" not in output,
        f"{who} refused the impostor broker with a stack trace: say it in one sentence "
        "(which certificate, which check, what to do), and exit or retry cleanly.\n"
        + "\n".join("    " + line for line in output.splitlines()[-8:]),
    )
