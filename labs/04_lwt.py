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
import json
import re
import signal
import sys
import time
from collections.abc import Iterator

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from mqtt_factory_lab.brokers import LOG
from mqtt_factory_lab.contract import validate
from mqtt_factory_lab.core.client import PROTOCOLS
from mqtt_factory_lab.core.factory import DeviceHandle
from mqtt_factory_lab.core.process import ChildProcess, ProcessTimeout, wait_until
from mqtt_factory_lab.experiment import unique, wait_broker_saw_disconnect
from mqtt_factory_lab.experiment.wills import (
    SILENT_CLIENT,
    assert_late_dashboard_sees_offline,
    says_offline,
    says_offline_on,
    status,
    watch_status,
    will_delay,
    will_of,
)
from mqtt_factory_lab.fixtures.factory import or_fail

pytestmark = [pytest.mark.lesson(4)]


#: the shortest keepalive MQTT allows (0 switches the check off)
KEEPALIVE = 1
#: brokers look for silent clients periodically: Mosquitto 2.0 every 6 s or so. The
#: will is due after 1.5 × keepalive; the lab allows this much more for the sweep.
KEEPALIVE_SWEEP = 7.0
#: a closed socket is noticed at once; this only absorbs a busy machine
PROMPT = 3.0
#: MQTT 5 will delay of the experiments. 1 s is the shortest, but brokers keep these timers
#: in whole seconds (Mosquitto 2.0 may publish up to CLOCK early), so 1 s could not be told
#: from no delay at all; 2 s can.
WILL_DELAY = 2
CLOCK = 1.0


def keepalive_budget(keepalive: int = KEEPALIVE) -> float:
    """Seconds within which a silent client's will must be out: 1.5 × keepalive, plus the sweep."""
    return 1.5 * keepalive + KEEPALIVE_SWEEP


# The status payloads, the wills and what dashboards see live in
# mqtt_factory_lab.experiment.wills; the timings above and the experiments are the chapter.


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


@pytest.fixture
def paused_programs() -> Iterator[list[ChildProcess]]:
    """Programs a test pauses with SIGSTOP: resumed (SIGCONT) and stopped when it ends."""
    programs: list[ChildProcess] = []
    yield programs
    for program in programs:
        program.signal(signal.SIGCONT)
        program.close()


@pytest.mark.broker
@pytest.mark.spec(mqtt311=["MQTT-3.1.2-24"], mqtt5=["MQTT-3.1.2-22"])
def test_broker_publishes_the_will_of_a_client_that_stops_answering(
    broker, broker_env, mqtt_client, topic_root, paused_programs
):
    dashboard = mqtt_client()
    dashboard.subscribe(f"{topic_root}/status/#", qos=1)
    topics = {}
    for protocol in PROTOCOLS:
        device_id = f"frozen-mqtt{protocol}"
        topics[protocol] = f"{topic_root}/status/{device_id}"
        will = json.dumps(status(device_id, "offline", "last-will"))
        program = ChildProcess(
            [
                *(sys.executable, "-c", SILENT_CLIENT),
                *(unique(device_id), topics[protocol], will, str(KEEPALIVE)),
            ],
            name=device_id,
            env=broker_env(broker, topic_root, protocol),
        )
        paused_programs.append(program.start())
    for program in paused_programs:
        program.wait_for_output("^connected$", timeout=10)
    dashboard.assert_nothing_received(why="Clients that answer their broker have no will sent.")

    for program in paused_programs:
        program.signal(signal.SIGSTOP)  # frozen: the socket stays open, nothing is sent
    paused_at = time.monotonic()
    budget = keepalive_budget()
    wills = dashboard.wait_for_messages(
        2,
        says_offline,
        timeout=budget,
        why=f"A client promises to send a packet at least every keepalive ({KEEPALIVE} s); a "
        f"broker that hears nothing for 1.5 × keepalive must close the connection and publish "
        f"the will (MQTT §3.1.2.10). Two clients were paused with SIGSTOP: their sockets stayed "
        f"open, and only the keepalive could reveal that they were gone.",
    )

    for protocol, topic in topics.items():
        arrived = [m for m in wills if m.topic == topic]
        assert arrived, f"The will of the MQTT {protocol} client ({topic}) never came."
        after = arrived[0].received_at - paused_at
        assert after <= budget, (
            f"The MQTT {protocol} client's will came {after:.1f} s after it fell silent: more "
            f"than 1.5 × keepalive ({1.5 * KEEPALIVE:g} s) plus the broker's keepalive sweep."
        )
    assert all(program.is_running() for program in paused_programs), (
        "The wills must come from the keepalive, while the paused programs still hold their "
        "sockets open; a program had exited instead."
    )


@pytest.mark.broker
@pytest.mark.needs("mqtt5")
@pytest.mark.spec(mqtt5=["MQTT-3.1.3-9"])
def test_will_delay_postpones_the_will_and_a_quick_return_cancels_it(mqtt_client, topic_root):
    flaky_topic = f"{topic_root}/status/conveyor-01"
    gone_topic = f"{topic_root}/status/packer-01"
    dashboard = mqtt_client()
    dashboard.subscribe(f"{topic_root}/status/#", qos=1)

    # Two devices with a will delay and a session that outlives it.
    flaky_id = unique("conveyor-01")
    flaky = mqtt_client(flaky_id, session_expiry=60, clean_start=False, connect=False)
    will_delay(
        flaky, flaky_topic, json.dumps(status("conveyor-01", "offline", "last-will")), WILL_DELAY
    )
    gone = mqtt_client(session_expiry=60, clean_start=False, connect=False)
    will_delay(
        gone, gone_topic, json.dumps(status("packer-01", "offline", "last-will")), WILL_DELAY
    )
    flaky.connect()
    gone.connect()

    flaky.drop()
    gone.drop()
    dropped_at = time.monotonic()
    back = mqtt_client(flaky_id, session_expiry=60, clean_start=False)  # the conveyor returns
    assert back.connack["session_present"], (
        "The conveyor reconnected with clean start off within its session expiry: the broker "
        "must resume its session (session present = 1)."
    )

    will = dashboard.wait_for_message(
        gone_topic,
        timeout=WILL_DELAY + PROMPT,
        why=f"With MQTT 5 will delay interval {WILL_DELAY} s, the broker publishes the will "
        f"{WILL_DELAY} s after the connection was lost (MQTT 5 §3.1.3.2.2); the packer never "
        f"came back.",
    )
    delay = will.received_at - dropped_at
    assert delay >= WILL_DELAY - CLOCK, (
        f"The packer's will came {delay:.2f} s after its connection was lost: a broker must hold "
        f"a will for its will delay interval ({WILL_DELAY} s, give or take its one-second clock) "
        f"before publishing it."
    )
    # The packer's will is out, so the conveyor's delay has passed too.
    dashboard.assert_nothing_received(
        flaky_topic,
        why="The conveyor reconnected to its session within its will delay interval, so the "
        "broker must not publish its will (MQTT 5 §3.1.3.2.2): a short network hiccup "
        "should not show the machine offline.",
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


def start_device(launcher, kind: str, device_id: str, **options) -> DeviceHandle:
    """Start a device with manifest options the ``device`` fixture does not pass (keepalive).

    Waits, like ``device()``, for its retained ``online`` status (the launcher's own check).
    """
    return or_fail(lambda: launcher.start_device(kind, device_id, options=options))


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
def test_paused_device_is_declared_offline_within_its_keepalive_budget(
    factory_launcher, mqtt_client, topic_root
):
    devices = []
    try:
        for protocol in PROTOCOLS:
            launcher = factory_launcher(protocol=protocol)
            kind_id = f"oven-mqtt{protocol}"
            devices.append(start_device(launcher, "oven", kind_id, keepalive=KEEPALIVE))
        watcher = watch_status(mqtt_client, f"{topic_root}/status/#")

        for oven in devices:
            oven.process.signal(signal.SIGSTOP)  # hung: the socket stays open, nothing is sent
        paused_at = time.monotonic()
        budget = keepalive_budget()
        for oven in devices:
            topic = oven.topic("status")
            will = watcher.wait_for_message(
                says_offline_on(topic),
                timeout=round(max(0.1, paused_at + budget - time.monotonic()), 1),
                why=f"{oven.device_id} was paused (SIGSTOP) after being started with keepalive "
                f"{KEEPALIVE} s: a broker declares a client dead after 1.5 × its keepalive of "
                f"silence and publishes its will, so 'offline' was due on {topic} within "
                f"{budget:g} s. Connect with the keepalive the lab passes (option keepalive, "
                f"paho: connect(host, port, keepalive=...)) and register a will.",
            )
            assert will.retain, (
                f"The will on {topic} is not retained: a dashboard opened later still sees "
                f"'online'. Use will_set(..., retain=True)."
            )
    finally:
        for oven in devices:
            oven.process.signal(signal.SIGCONT)
            oven.process.kill()


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
    if LOG in broker.capabilities:
        try:
            broker.wait_for_log(
                f"Received DISCONNECT from {re.escape(packer.client_id)}", 5, since=mark
            )
        except AssertionError:
            pytest.fail(
                f"After SIGTERM {packer.device_id} published 'offline' but its connection (client "
                f"id {packer.client_id}) did not end with DISCONNECT, so the broker may still send "
                f"its will. Call disconnect() before exiting, and connect with the client id the "
                f"lab gives.",
                pytrace=False,
            )
    assert_late_dashboard_sees_offline(
        mqtt_client, topic, f"{packer.device_id} was stopped gracefully (SIGTERM)."
    )
