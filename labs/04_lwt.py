"""Lesson 04 — Last Will and Testament: the broker speaks for a client that vanished.

A device that shuts down properly can say goodbye: it publishes ``offline`` on its
status topic, then sends DISCONNECT. A device that loses power, crashes or hangs
cannot say anything. Yet the dashboard must learn that the press is gone, and the
controller must stop feeding it parts. MQTT solves this with a message the client
hands to the broker *in advance*, in its CONNECT packet: the **Last Will**.

* The will (topic, payload, QoS, retain flag) travels in the **CONNECT** packet.
  It is set before connecting (paho: ``will_set()`` before ``connect()``) and holds
  for that one connection. A ``will_set()`` after ``connect()`` waits for the next
  connection: meanwhile the device has no will.
* The broker publishes the will when the connection ends **without a DISCONNECT**:
  the socket closed (crash, ``kill -9``, a pulled cable that the TCP stack notices),
  a protocol error, or silence. A client promises to send something at least every
  **keepalive** seconds (a PINGREQ when it has nothing to say); a broker that hears
  nothing for **1.5 × keepalive** closes the connection and publishes the will
  (MQTT 3.1.1 §3.1.2.10, MQTT 5 §3.1.2.10). A frozen process keeps its socket open,
  so only the keepalive can unmask it.
* A **DISCONNECT** discards the will: a device that leaves cleanly must publish its
  ``offline`` status itself (MQTT 3.1.1 §3.1.2.5, MQTT 5 §3.1.2.5). MQTT 5 lets a
  client leave cleanly *and* have its will sent: DISCONNECT with reason code
  **0x04 "Disconnect with will message"** (MQTT 5 §3.14.2.1).
* A **retained** will stays on the status topic like any retained message: a
  dashboard opened an hour after the crash still sees ``offline``. Without the retain
  flag, the late dashboard finds the retained ``online`` of the device's last start:
  a dead press shown running.
* MQTT 5 **will delay interval** (§3.1.3.2.2): the broker waits that many seconds
  before publishing the will, and drops it if the client reconnects to its session
  meanwhile — a Wi-Fi hiccup no longer flashes "offline" on every screen. The will
  goes out at the latest when the session ends, so a delay needs a session expiry
  at least as long.
* **Session takeover**: a second connection with the same client id makes the
  broker close the first one (MQTT 3.1.1 §3.1.4, MQTT 5 §3.1.4: DISCONNECT 0x8E
  "Session taken over"). The first connection ended without DISCONNECT, so its will
  is published. Two programs sharing one id take the connection from each other in
  turn, and the dashboard flickers between online and offline.

In the virtual factory every device connects with the will
``<root>/status/<device_id>`` = ``{"status": "offline", "reason": "last-will", ...}``
(``schemas/status.schema.json``), **retained, QoS 1**, then publishes ``online``
retained. A graceful stop (SIGTERM) publishes ``{"status": "offline", "reason":
"shutdown"}`` itself before DISCONNECT.

Pitfalls:

* No will at all, or a will set after ``connect()``: a crashed device stays
  ``online`` forever.
* A will without retain: live subscribers see ``offline`` once, every dashboard opened
  later sees the stale retained ``online``.
* A long keepalive (paho's default is 60 s): a hung device is declared dead only after
  90 s. Keepalive is the trade-off between traffic and how fast death is noticed.
* Timing: the broker checks keepalives periodically, not continuously (Mosquitto 2.0
  looks every few seconds), so the will comes *after* 1.5 × keepalive, not exactly then.
* Relying on the will for a planned stop: after a DISCONNECT there is none.

Try it (the seed's exercise 4, with the lab's reference programs)::

    python -m sim.cli sub --topic 'factory/status/#' --qos 1 --verbose
    python -m sim.device --device press --crash-after 10
    python -m sim.device --device oven --keepalive 1   # then: kill -STOP <its pid>

Watch ``factory/status/press`` flip to ``offline`` (reason ``last-will``) ten seconds
after the start; pause the oven and its will follows a few seconds later.

Your programs in this lesson: the ``[roles.device]`` role of your manifest, started
once per experiment with the MQTT version in ``VF_MQTT_PROTOCOL``; it must publish its
retained ``online`` status (the lab waits for it), and take the options
``crash_after`` (``{crash_after}`` seconds, then end abruptly without DISCONNECT) and
``keepalive`` (``{keepalive}``, an integer number of seconds: connect with it). The
lab stops a device with SIGTERM (it must publish ``offline`` itself), SIGKILL, or
pauses it with SIGSTOP.

Run it: ``pytest labs/04_lwt.py -v``.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from mqtt_factory_lab.brokers import Broker
from mqtt_factory_lab.contract import validate
from mqtt_factory_lab.core.client import PROTOCOLS
from mqtt_factory_lab.core.process import ProcessTimeout, wait_until
from mqtt_factory_lab.experiment import unique, wait_broker_saw_disconnect
from mqtt_factory_lab.experiment.ahead import Ahead, ahead_scope, judged_by, launchers, start_ahead
from mqtt_factory_lab.experiment.wills import (
    Hiccup,
    Silence,
    assert_late_dashboard_sees_offline,
    assert_left_with_disconnect,
    lose_connections,
    says_offline_on,
    silence_clients,
    silence_devices,
    status,
    watch_status,
    will_of,
)
from mqtt_factory_lab.fixtures.brokers import broker_or_fail

pytestmark = [pytest.mark.lesson(4)]


#: the shortest keepalive MQTT allows (0 switches the check off)
KEEPALIVE = 1
#: brokers look for silent clients periodically: Mosquitto 2.0 every 6 s or so. The
#: will is due after 1.5 × keepalive; the lab allows this much more for the sweep.
KEEPALIVE_SWEEP = 7.0
#: seconds within which a silent client's will must be out: 1.5 × keepalive, plus the sweep
KEEPALIVE_BUDGET = 1.5 * KEEPALIVE + KEEPALIVE_SWEEP
#: a closed socket is noticed at once; this only absorbs a busy machine
PROMPT = 3.0
#: MQTT 5 will delay of the experiments. 1 s is the shortest, but brokers keep these timers
#: in whole seconds (Mosquitto 2.0 may publish up to CLOCK early), so 1 s could not be told
#: from no delay at all; 2 s can.
WILL_DELAY = 2
CLOCK = 1.0


# -- Runs that wait on the broker's clock -------------------------------------------------
# A will by keepalive comes at the broker's next look for silent clients (Mosquitto 2.0: every
# 6 s), a delayed will after its delay. These runs start at the module's first experiment
# (mqtt_factory_lab.experiment.ahead); the last section judges them, each against its own run
# (in a serial session of several lessons, after the other lessons: labs/README.md).
# The payloads, wills, dashboards and runs live in mqtt_factory_lab.experiment.wills.


@pytest.fixture(scope=ahead_scope)
def shared_broker(broker_pool) -> Broker:
    """The shared broker, for the module's runs."""
    return broker_or_fail(lambda: broker_pool.shared("open"))


@pytest.fixture(scope=ahead_scope)
def silent_clients(shared_broker) -> Iterator[Ahead[Silence]]:
    """A bare client per MQTT version, keepalive 1 s and a will, then paused together (SIGSTOP)."""
    with Ahead(lambda stack: silence_clients(stack, shared_broker, KEEPALIVE)) as run:
        yield run


@pytest.fixture(scope=ahead_scope)
def paused_ovens(shared_broker, solution, pytestconfig) -> Iterator[Ahead[Silence]]:
    """The solution's oven per MQTT version, started with keepalive 1 s, then paused together."""
    ovens = launchers(pytestconfig, solution, shared_broker, list(PROTOCOLS))
    with Ahead(lambda stack: silence_devices(stack, ovens, "oven", KEEPALIVE)) as run:
        yield run


@pytest.fixture(scope=ahead_scope)
def wifi_hiccup(shared_broker) -> Iterator[Ahead[Hiccup]]:
    """MQTT 5 conveyor and packer with a will delay lose their connection; the conveyor returns."""
    with Ahead(
        lambda stack: lose_connections(stack, shared_broker, "conveyor-01", "packer-01", WILL_DELAY)
    ) as run:
        yield run


judged_by("silent_clients", "paused_ovens", "wifi_hiccup")


@pytest.fixture(scope="module", autouse=True)
def _runs_started_ahead(request) -> None:
    start_ahead(request, "silent_clients", "paused_ovens", "wifi_hiccup")


# -- The broker's side -----------------------------------------------------------------


@pytest.mark.broker
@pytest.mark.parametrize("qos", [0, 1, 2], ids=lambda q: f"will-qos{q}")
@pytest.mark.spec("MQTT-3.1.2-8")
def test_broker_publishes_the_will_when_the_connection_drops_without_disconnect(
    mqtt_client, topic_root, protocol, qos
):
    topic = f"{topic_root}/status/press-01"
    dashboard = mqtt_client(protocol=protocol)
    dashboard.subscribe(topic, qos=2)
    will = will_of(topic, "press-01", qos=qos, retain=False)
    press = mqtt_client(protocol=protocol, will=will)

    press.drop()  # the socket closes, as when the process dies: no DISCONNECT

    message = dashboard.wait_for_message(
        topic,
        timeout=PROMPT,
        why=f"A client whose connection ends without DISCONNECT has its Last Will published by "
        f"the broker (MQTT §3.1.2.5): the press closed its socket, so its will should have "
        f"arrived on {topic}.",
    )
    assert message.payload == will[1].encode(), (
        f"The broker must publish the will exactly as the client registered it in CONNECT; "
        f"it sent {message.payload!r}."
    )
    assert message.qos == qos, (
        f"The will is published at the QoS the client gave it ({qos}), and a subscriber at QoS 2 "
        f"receives it at that QoS; it came at QoS {message.qos}."
    )


@pytest.mark.broker
@pytest.mark.spec(mqtt311=["MQTT-3.14.4-3"], mqtt5=["MQTT-3.14.4-3", "MQTT-3.1.2-10"])
def test_clean_disconnect_discards_the_will(broker, mqtt_client, topic_root, protocol):
    topic = f"{topic_root}/status/press-01"
    dashboard = mqtt_client(protocol=protocol)
    dashboard.subscribe(topic, qos=1)
    press = mqtt_client(protocol=protocol, will=will_of(topic, "press-01"))
    mark = broker.log_mark()

    press.disconnect()
    wait_broker_saw_disconnect(broker, press.client_id, mark)

    dashboard.assert_nothing_received(
        topic,
        why="A DISCONNECT packet tells the broker the client left on purpose, and the broker "
        "must then discard its Last Will (MQTT §3.1.2.5). A device that stops cleanly "
        "publishes its 'offline' status itself.",
    )


@pytest.mark.broker
@pytest.mark.needs("retain")
@pytest.mark.spec(mqtt311=["MQTT-3.1.2-17"], mqtt5=["MQTT-3.1.2-15"])
def test_retained_will_reaches_dashboards_opened_after_the_crash(mqtt_client, topic_root, protocol):
    topic = f"{topic_root}/status/oven-01"
    press = mqtt_client(protocol=protocol, will=will_of(topic, "oven-01", qos=1, retain=True))
    press.publish(topic, status("oven-01", "online", "connected"), qos=1, retain=True)
    live = mqtt_client(protocol=protocol)
    live.subscribe(topic, qos=1)
    live.wait_for_message(topic, why="The retained 'online' status is delivered at subscribe.")

    press.drop()
    live.wait_for_message(
        says_offline_on(topic),
        timeout=PROMPT,
        why=f"The oven's connection closed without DISCONNECT: its will should be on {topic}.",
    )

    late = mqtt_client(protocol=protocol)
    late.subscribe(topic, qos=1)
    late.sync()
    stored = late.received(topic)
    assert len(stored) == 1 and stored[0].retain, (
        f"A will published with the retain flag replaces the retained message on {topic}, so a "
        f"dashboard subscribing after the crash must get exactly one stored message, flagged "
        f"retained; it got {[m.describe() for m in stored]}."
    )
    assert validate("status", stored[0].payload)["status"] == "offline", (
        f"The retained will ('offline') must have replaced the retained 'online' on {topic}; "
        f"the late dashboard still got {stored[0].text}."
    )


@pytest.mark.broker
@pytest.mark.needs("mqtt5")
@pytest.mark.spec(mqtt5=["MQTT-3.1.2-8"])
def test_disconnect_with_will_message_publishes_the_will(broker, mqtt_client, topic_root):
    topic = f"{topic_root}/status/robot-arm-01"
    dashboard = mqtt_client()
    dashboard.subscribe(topic, qos=1)
    arm = mqtt_client(will=will_of(topic, "robot-arm-01", retain=False))

    arm.paho.disconnect(
        reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message")
    )

    message = dashboard.wait_for_message(
        topic,
        timeout=PROMPT,
        why="An MQTT 5 DISCONNECT with reason code 0x04 'Disconnect with will message' ends the "
        "connection cleanly and still asks the broker to publish the will (MQTT 5 §3.14.2.1).",
    )
    assert validate("status", message.payload)["status"] == "offline"


@pytest.mark.broker
@pytest.mark.spec(mqtt311=["MQTT-3.1.4-2"], mqtt5=["MQTT-3.1.4-3", "MQTT-3.1.2-8"])
def test_second_connection_with_the_same_client_id_takes_over_and_fires_the_will(
    mqtt_client, topic_root, protocol
):
    topic = f"{topic_root}/status/press-01"
    client_id = unique("press-01")
    dashboard = mqtt_client(protocol=protocol)
    dashboard.subscribe(topic, qos=1)
    first = mqtt_client(client_id, protocol=protocol, will=will_of(topic, "press-01"))

    second = mqtt_client(client_id, protocol=protocol)  # e.g. a copy of the program started twice

    with contextlib.suppress(ProcessTimeout):
        wait_until(lambda: not first.connected, timeout=PROMPT)
    # paho would reconnect the first client a second later and take the id back: stop it.
    first.paho.loop_stop()
    assert not first.connected and second.connected, (
        f"Only one connection can hold a client id: the newer one ({client_id}) must stay "
        f"connected and the older one must have been disconnected (MQTT §3.1.4); after "
        f"{PROMPT}s the older one was {'still' if first.connected else 'not'} connected and the "
        f"newer one {'was' if second.connected else 'was not'}."
    )
    if protocol == "3.1.1":
        # MQTT 3.1.1 lists the cases where a will is published "including but not limited to";
        # a takeover is not among them, so a broker may publish the will or not (Mosquitto does).
        return
    will = dashboard.wait_for_message(
        topic,
        timeout=PROMPT,
        why=f"A second connection with client id {client_id!r} makes the broker close the first "
        f"one (MQTT 5 §3.1.4), and the first one's will is then published like at any other end "
        f"without DISCONNECT.",
    )
    assert validate("status", will.payload)["status"] == "offline"


# -- The factory's own devices ---------------------------------------------------------
# The experiments below start devices of the solution under test (``--solution``; by
# default the lab's own ``sim.device``), end them as a crash, a hang and a planned stop
# would, and look at what a dashboard sees on their status topic.


@pytest.mark.solution
def test_killed_device_is_declared_offline_by_its_retained_qos1_will(device, mqtt_client, protocol):
    press = device("press", protocol=protocol)
    topic = press.topic("status")
    watcher = watch_status(mqtt_client, topic)

    press.kill()  # SIGKILL: no code of the device runs any more

    will = watcher.wait_for_message(
        says_offline_on(topic),
        timeout=PROMPT,
        why=f"{press.device_id} was killed (SIGKILL), so its connection ended without DISCONNECT "
        f"and the broker should have published its Last Will on {topic}; none came. Register "
        f"the will before connecting: will_set('{topic}', <offline status>, qos=1, retain=True) "
        f"then connect() — a will set after connect() only counts for the next connection.",
    )
    payload = validate("status", will.payload)
    assert payload["device_id"] == press.device_id, (
        f"The will on {topic} names device {payload['device_id']!r}, not {press.device_id!r}."
    )
    assert payload.get("reason", "last-will") == "last-will", (
        f"The will on {topic} gives reason {payload['reason']!r}. The status schema keeps "
        f"'shutdown' for the offline a device publishes itself and 'last-will' for the one the "
        f"broker publishes for it, so a dashboard can tell a planned stop from a crash."
    )
    assert will.qos == 1, (
        f"The will on {topic} came at QoS {will.qos} to a QoS 2 subscriber, so it was registered "
        f"at QoS {will.qos}. The factory's status messages are QoS 1: a lost 'offline' would "
        f"leave the device shown online forever. Use will_set(..., qos=1, ...)."
    )
    assert will.retain, (
        f"The will on {topic} arrived without the retain flag (this subscriber asked for retain "
        f"as published): it was registered with retain=False, so the broker keeps the retained "
        f"'online' and a dashboard opened later shows a dead device as online. Use "
        f"will_set(..., retain=True)."
    )
    assert_late_dashboard_sees_offline(mqtt_client, topic, f"{press.device_id} was killed.")


@pytest.mark.solution
def test_device_crashing_by_itself_shows_offline_to_a_late_dashboard(
    device, mqtt_client, topic_root, protocol
):
    topic = f"{topic_root}/status/conveyor-01"
    watcher = watch_status(mqtt_client, topic)  # before the start: the crash comes quickly
    conveyor = device("conveyor", "conveyor-01", protocol=protocol, crash_after=0.2)

    try:
        conveyor.process.wait_exit(timeout=10)
    except ProcessTimeout:
        pytest.fail(
            "The device was started with crash_after=0.2 and should have ended abruptly "
            "(without DISCONNECT) 0.2 s later; it was still running 10 s later.",
            pytrace=False,
        )
    watcher.wait_for_message(
        says_offline_on(topic),
        timeout=PROMPT,
        why=f"{conveyor.device_id} crashed (crash_after), without DISCONNECT: the broker should "
        f"have published its Last Will on {topic}. Register a will before connecting.",
    )
    assert_late_dashboard_sees_offline(
        mqtt_client, topic, f"{conveyor.device_id} crashed by itself (crash_after)."
    )


@pytest.mark.solution
def test_device_stopped_gracefully_publishes_offline_itself(device, broker, mqtt_client, protocol):
    packer = device("packer", protocol=protocol)
    topic = packer.topic("status")
    watcher = watch_status(mqtt_client, topic)
    mark = broker.log_mark()

    packer.process.signal(signal.SIGTERM)

    goodbye = watcher.wait_for_message(
        says_offline_on(topic),
        timeout=5,
        why=f"A device asked to stop (SIGTERM) must say goodbye itself: publish "
        f'{{"status": "offline", "reason": "shutdown"}} retained at QoS 1 on {topic}, then '
        f"DISCONNECT (which discards its will). Nothing came.",
    )
    payload = validate("status", goodbye.payload)
    assert payload.get("reason") != "last-will", (
        f"The 'offline' on {topic} after SIGTERM is the device's Last Will (reason 'last-will'): "
        f"the program died of the signal without DISCONNECT and the broker spoke for it. Handle "
        f"SIGTERM: publish offline with reason 'shutdown', then disconnect()."
    )
    assert goodbye.retain, f"The 'offline' status on {topic} must be retained."
    assert_left_with_disconnect(broker, packer, since=mark)
    assert_late_dashboard_sees_offline(
        mqtt_client, topic, f"{packer.device_id} was stopped gracefully (SIGTERM)."
    )


# -- Waiting on the broker's clock ----------------------------------------------------------
# Each experiment below judges a run started at the module's first experiment (the fixtures
# above): its deadlines count from that run's own pause or drop, not from the experiment's start.


@pytest.mark.broker
@pytest.mark.needs("mqtt5")
@pytest.mark.spec(mqtt5=["MQTT-3.1.3-9"])
def test_will_delay_postpones_the_will_and_a_quick_return_cancels_it(wifi_hiccup):
    # Two devices with a will delay and a session that outlives it lost their connection
    # together; the conveyor came back at once, the packer never did.
    run = wifi_hiccup.result()
    assert run.back.connack["session_present"], (
        "The conveyor reconnected with clean start off within its session expiry: the broker "
        "must resume its session (session present = 1)."
    )
    will = run.will_of_gone(
        WILL_DELAY + PROMPT,
        why=f"With MQTT 5 will delay interval {WILL_DELAY} s, the broker publishes the will "
        f"{WILL_DELAY} s after the connection was lost (MQTT 5 §3.1.3.2.2); the packer never "
        f"came back.",
    )
    delay = will.received_at - run.dropped_at
    assert delay >= WILL_DELAY - CLOCK, (
        f"The packer's will came {delay:.2f} s after its connection was lost: a broker must hold "
        f"a will for its will delay interval ({WILL_DELAY} s, give or take its one-second clock) "
        f"before publishing it."
    )
    # The packer's will is out, so the conveyor's delay has passed too.
    run.dashboard.assert_nothing_received(
        run.returning,
        why="The conveyor reconnected to its session within its will delay interval, so the "
        "broker must not publish its will (MQTT 5 §3.1.3.2.2): a short network hiccup "
        "should not show the machine offline.",
    )


@pytest.mark.broker
@pytest.mark.needs("mqtt5")  # one MQTT 3.1.1 and one MQTT 5 client, judged together
@pytest.mark.spec(mqtt311=["MQTT-3.1.2-24"], mqtt5=["MQTT-3.1.2-22"])
def test_broker_publishes_the_will_of_a_client_that_stops_answering(silent_clients):
    # A client per MQTT version connected with keepalive 1 s, then was paused with SIGSTOP.
    silence = silent_clients.result()
    for protocol, program in silence.programs.items():
        will = silence.will(
            protocol,
            KEEPALIVE_BUDGET,
            why=f"A client promises to send a packet at least every keepalive ({KEEPALIVE} s); a "
            f"broker that hears nothing for 1.5 × keepalive must close the connection and "
            f"publish the will (MQTT §3.1.2.10). The MQTT {protocol} client was paused with "
            f"SIGSTOP: its socket stayed open, and only the keepalive could reveal it was gone.",
        )
        after = will.received_at - silence.paused_at
        assert after > 0, (
            f"The MQTT {protocol} client's will came while it still answered its broker: a "
            f"client that keeps its keepalive promise has no will sent."
        )
        assert after <= KEEPALIVE_BUDGET, (
            f"The MQTT {protocol} client's will came {after:.1f} s after it fell silent: more "
            f"than 1.5 × keepalive ({1.5 * KEEPALIVE:g} s) plus the broker's keepalive sweep."
        )
        assert program.is_running(), (
            "The will must come from the keepalive, while the paused program still holds its "
            f"socket open; the MQTT {protocol} program had exited instead."
        )


@pytest.mark.solution
def test_paused_device_is_declared_offline_within_its_keepalive_budget(paused_ovens):
    # An oven per MQTT version, started with the option keepalive = 1, was paused (SIGSTOP).
    silence = paused_ovens.result()
    for protocol, topic in silence.topics.items():
        will = silence.will(
            protocol,
            KEEPALIVE_BUDGET,
            why=f"The MQTT {protocol} oven was paused (SIGSTOP) after being started with "
            f"keepalive {KEEPALIVE} s: a broker declares a client dead after 1.5 × its keepalive "
            f"of silence and publishes its will, so 'offline' was due on {topic} within "
            f"{KEEPALIVE_BUDGET:g} s. Connect with the keepalive the lab passes (option "
            f"keepalive, paho: connect(host, port, keepalive=...)) and register a will.",
        )
        assert will.retain, (
            f"The will on {topic} is not retained: a dashboard opened later still sees "
            f"'online'. Use will_set(..., retain=True)."
        )
