"""Lesson 10 — Bridges: from the site's broker to the cloud, and back only where asked.

A factory keeps its own broker on the shop floor: machines must keep talking to the
controller when the internet is down. Head office wants the same data in the cloud,
from every site. Nobody wants each machine to hold two connections, so the *site
broker* itself connects to the *cloud broker* as a client — a **bridge**. Mosquitto
configures one with a ``connection`` block (mosquitto.conf(5), "Configuring bridges"):

* ``address HOST:PORT`` — the cloud broker; the bridge is an ordinary MQTT client there,
  with the client id ``remote_clientid``.
* ``topic PATTERN DIRECTION QOS LOCAL-PREFIX REMOTE-PREFIX`` — what crosses, in which
  direction (``out`` to the cloud, ``in`` from it, ``both``), and how topics are
  **remapped**: ``topic factory/# out 1 "" sites/plant-1/`` makes the site's
  ``factory/alarms/press/temperature`` the cloud's
  ``sites/plant-1/factory/alarms/press/temperature``. Without a remote prefix every site
  writes into the same ``factory/...`` tree in the cloud, and nobody can tell the
  plants apart (or, worse, one site's commands reach another site's press).
* **QoS across the bridge**: the bridge subscribes locally with the topic's QoS and
  publishes onwards with the lower of that and the message's own: with ``qos 1`` a QoS 1
  alarm stays QoS 1, a QoS 0 reading stays QoS 0 (and ``qos 0`` would quietly downgrade
  every alarm to "at most once" on the wide-area link that needs it most).
* **The cloud goes away**: the bridge is a client with a session. With ``cleansession
  false`` the site broker keeps the bridge's session while it is disconnected and
  *queues its QoS 1 and 2 messages* (MQTT 3.1.1 §3.1.2.4, MQTT 5 §4.1); when the bridge
  reconnects it forwards them. When it retries is ``restart_timeout FIRST LONGEST``:
  Mosquitto backs off between attempts, and with a single value its default back-off
  (5 to 30 s) still applies; ``restart_timeout 1 1`` retries every second. QoS 0 is not
  queued for an offline client: telemetry sent during the outage is gone, by design. With ``cleansession
  true`` the session — and every alarm of the outage — is thrown away.
* **The bridge's own state** (``notifications true``): ``1`` retained on
  ``notification_topic`` when connected, ``0`` when not. On the cloud the ``0`` is the
  bridge's **Last Will** (lesson 04): when the site broker dies, the cloud broker says so.
* **Loops**: a bridge that sends ``factory/#`` out *and* takes commands in is
  subscribed in the cloud to a topic it also publishes to. An ordinary subscriber
  gets its own messages back — the bridge would carry the command to the site a second
  time. MQTT 3.1.1 has no way to say "not my own messages", so Mosquitto adds its own:
  with ``try_private true`` (the default) the bridge sets a private bit in its
  CONNECT's protocol version and a Mosquitto cloud treats it as a bridge, never echoing
  its messages back. MQTT 5 made it standard: a bridge with ``bridge_protocol_version
  mqttv50`` subscribes with the **No Local** option (MQTT 5 §3.8.3.1), which every MQTT 5
  broker honours. A cloud that does not know Mosquitto's private bit (``try_private
  false``, or another vendor) on MQTT 3.1.1 echoes every overlapping message.

In the virtual factory, the site bridges ``factory/#`` out under ``sites/<site>/`` at
QoS 1 and takes back only ``sites/<site>/factory/commands/cloud/#`` (the cloud's
commands, published on the site as ``factory/commands/cloud/<device>``); its state is
retained on ``sites/<site>/bridge/state``.

Pitfalls:

* ``topic # both``: every cloud topic under the prefix flows into the plant (a
  dashboard's test publish in the cloud starts a real press), and what goes out can come
  back.
* ``cleansession true`` "to start fresh": every outage silently drops its alarms.
* No remote prefix: ten sites write the same ``factory/state/press`` in the cloud.
* Bridge QoS 0: the bridge is the one link that *does* fail.

MQTT 3.1.1 §3.1.2.4 (clean session), §4.1; MQTT 5 §3.1.2.4, §3.8.3.1 (No Local), §4.1;
mosquitto.conf(5) ``connection``, ``address``, ``topic``, ``cleansession``,
``try_private``, ``bridge_protocol_version``, ``notifications``.

Try it, with two brokers (``mosquitto -p 1884`` as the cloud) and
``docker/variants/bridge.conf`` with ``{cloud_host}:{cloud_port}`` = ``localhost:1884``
and ``{site}`` = ``plant-1`` added to the site broker's configuration::

    python -m sim.cli sub --port 1884 --topic 'sites/#' --qos 1 --verbose   # the cloud
    python -m sim.run_all --no-dashboard                                       # the site
    # stop the cloud broker for ten seconds, start it again: the alarms of the outage arrive

Your programs in this lesson: ``[files] bridge`` of your manifest — a Mosquitto bridge
configuration appended to the site broker's (``connection``, ``address {cloud_host}:
{cloud_port}`` and the ``topic`` lines; the lab writes the cloud's address and a site name
``{site}`` into it). It must bridge ``factory/#`` out under ``sites/{site}/`` keeping QoS 1,
take in only ``sites/{site}/factory/commands/cloud/#``, keep its session (QoS 1 of an
outage arrives), publish its state retained on ``sites/{site}/bridge/state`` and send
nothing back where it came from. The lab waits up to 15 s for it to reconnect.

Run it: ``pytest labs/10_bridge.py -v``; grade a bridge with ``pytest labs/10_bridge.py
-m solution --solution path/to/solution.toml``.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from mqtt_factory_lab.brokers import RESTART
from mqtt_factory_lab.contract import validate
from mqtt_factory_lab.core.bridge import BrokerPair
from mqtt_factory_lab.core.client import MQTTTimeout, RecordingClient
from mqtt_factory_lab.core.solution import Solution
from mqtt_factory_lab.experiment.ahead import (
    Ahead,
    AheadCases,
    ahead_scope,
    case_run,
    users,
)
from mqtt_factory_lab.experiment.bridge import (
    Run,
    carrying,
    client_on,
    clients_on,
    command_goes_out,
    marked_alarm,
    marked_reading,
    watch_a_command_go_out,
)
from mqtt_factory_lab.fixtures.bridge import bridge_file, pair_for_run, remember_pair

pytestmark = pytest.mark.lesson(10)

#: how long a bridge may take to reconnect to a cloud that came back (``restart_timeout 1 1``
#: takes 1–2 s; a bridge left on Mosquitto's default back-off takes 5–30 s)
RECONNECT_BUDGET = 15.0


@pytest.fixture
def student_bridge(bridged_brokers: Callable[..., BrokerPair], solution: Solution) -> BrokerPair:
    """The site and cloud brokers, bridged by the solution's ``[files] bridge``."""
    return bridged_brokers(bridge_file(solution))


# -- Runs that wait out a window ---------------------------------------------------------
# An outage lasts until the bridge reconnects (``restart_timeout 1 1``: 1-2 s), and a loop is
# disproved only by listening a while (QUIET) for a copy too many. These runs start at the
# module's first experiment, each on a pair of its own (mqtt_factory_lab.experiment.ahead), and
# wait out their windows side by side while the other experiments run; the experiment that
# judges a run finds it finished, or waits only for what is left.


def loop_window_run(stack, params, pool, config) -> Run:
    """The lab's loop bridge with the case's ``settings``: do ``copies`` come back, or more?"""
    text = LOOP_BRIDGE.format(settings=params["settings"])
    pair, marks = pair_for_run(stack, pool, config, text=text)
    return watch_a_command_go_out(stack, pair, marks, params["copies"], "lesson10-loop")


def solution_echo_run(stack, solution: Solution, pool, config) -> Run:
    """The solution's bridge carries a command out that its way in also matches."""
    pair, marks = pair_for_run(stack, pool, config, bridge_file(solution))
    site_clients, cloud_clients = clients_on(stack, pair, "lesson10-echo")
    site = site_clients()
    site.subscribe("factory/#", qos=1)
    cloud = cloud_clients()
    cloud.subscribe("#", qos=1)
    # A command published on the site matches the out pattern (factory/#) *and*, in the
    # cloud, the bridge's own in subscription (factory/commands/cloud/#).
    marker = command_goes_out(site, cloud)
    witness = uuid.uuid4().hex[:8]
    # Round trips on both brokers after a witness crossed: anything echoed would be here.
    reading = marked_reading("press-01", witness)
    site.publish("factory/telemetry/press-01/temperature", reading, 1)
    cloud.wait_for_message(carrying(witness), timeout=5, why="The bridge carries readings out.")
    with contextlib.suppress(MQTTTimeout):
        site.wait_for_messages(2, carrying(marker), timeout=1.0)
    return Run(pair, marks, site, cloud, marker)


@dataclass
class Outage(Run):
    """The outage run: ``back`` is head office's subscriber after the cloud came back."""

    back: RecordingClient | None = None


def cloud_outage_run(stack, solution: Solution, pool, config) -> Outage:
    """The cloud goes away while the site publishes an alarm (QoS 1) and a reading (QoS 0)."""
    pair, marks = pair_for_run(stack, pool, config, bridge_file(solution))
    site_clients, cloud_clients = clients_on(stack, pair, "lesson10-outage")
    marker = uuid.uuid4().hex[:8]
    head_office = f"head-office-{marker}"
    remote = "#"  # wherever the site's messages land (the prefix is another experiment's)
    cloud = cloud_clients(client_id=head_office, clean_start=False, session_expiry=600)
    cloud.subscribe(remote, qos=1)
    cloud.sync()
    cloud.disconnect()
    site = site_clients()
    # The site learns the cloud is gone when its bridge's connection closes: wait for the
    # broker's own log line, not for a fixed time.
    mark = pair.site.log_mark()
    pair.cloud.stop()
    pair.site.wait_for_log(
        r"(closed its connection|Socket error|disconnect)", timeout=10, since=mark
    )
    alarm = marked_alarm("press-01", marker)
    site.publish("factory/alarms/press-01/temperature", alarm, qos=1)
    reading = marked_reading("press-01", marker)
    site.publish("factory/telemetry/press-01/temperature", reading, 0)
    pair.cloud.start()

    back = cloud_clients(client_id=head_office, clean_start=False, session_expiry=600)
    missing = ""
    try:
        back.wait_for_message(
            lambda m: carrying(marker)(m) and "/alarms/" in m.topic,
            timeout=RECONNECT_BUDGET,
            why="An alarm (QoS 1) was published on the site while the cloud was away. The "
            "site broker keeps the bridge's session with `cleansession false` and queues "
            "its QoS 1 messages; once the bridge reconnects they must arrive. Nothing came "
            f"within {RECONNECT_BUDGET:g}s of the cloud's return: with `cleansession true` "
            "the session, and every alarm of the outage, is discarded. Set `cleansession "
            "false` (and give the out topic line QoS 1: a bridge subscribed at QoS 0 queues "
            "nothing).",
        )
    except MQTTTimeout as error:
        missing = str(error)
    if missing:  # failed outside the handler: the message once, without the timeout under it
        pytest.fail(missing, pytrace=False)
    # A reading published now is the witness: the outage's QoS 0 reading would be here
    # before it.
    witness = uuid.uuid4().hex[:8]
    reading = marked_reading("press-01", witness)
    site.publish("factory/telemetry/press-01/temperature", reading, 0)
    back.wait_for_message(carrying(witness), timeout=5, why="The bridge is back: readings flow.")
    return Outage(pair, marks, site, cloud, marker, back)


@pytest.fixture(scope=ahead_scope, autouse=True)
def bridge_runs(request, broker_pool, pytestconfig) -> Iterator[AheadCases]:
    """The module's runs, one per experiment case; on a serial run all start now, side by side."""
    solution: list = []

    def with_solution(run):
        def start(stack, params):
            if isinstance(solution[0], BaseException):
                raise solution[0]  # no solution to run: each of its experiments says so
            return run(stack, solution[0], broker_pool, pytestconfig)

        return start

    if users(request, "solution_echo") or users(request, "cloud_outage"):
        try:
            solution.append(request.getfixturevalue("solution"))
        except pytest.fail.Exception as error:
            solution.append(error)
    cases = AheadCases(
        request,
        {
            "loop_window": lambda stack, p: loop_window_run(stack, p, broker_pool, pytestconfig),
            "solution_echo": with_solution(solution_echo_run),
            "cloud_outage": with_solution(cloud_outage_run),
        },
    )
    with cases:
        yield cases


loop_window = case_run("loop_window", "bridge_runs")
solution_echo = case_run("solution_echo", "bridge_runs")
cloud_outage = case_run("cloud_outage", "bridge_runs")


def judged(request, ahead: Ahead) -> Run:
    """The run's result, its pair remembered for the experiment's failure report."""
    __tracebackhide__ = True
    run = ahead.result()
    remember_pair(request, run.pair, run.marks)
    return run


# -- the solution's bridge --------------------------------------------------------------


@pytest.mark.solution
def test_site_topics_arrive_in_the_cloud_under_the_site_prefix(student_bridge, mqtt_client):
    pair = student_bridge
    marker = uuid.uuid4().hex[:8]
    cloud = client_on(mqtt_client, pair.cloud)
    cloud.subscribe("#", qos=1)
    site = client_on(mqtt_client, pair.site)
    local = "factory/alarms/press-01/temperature"
    site.publish(local, marked_alarm("press-01", marker), qos=1)

    expected = f"sites/{pair.site_name}/{local}"
    message = cloud.wait_for_message(
        carrying(marker),
        timeout=5,
        why=f"The site published on {local}; the bridge (`topic factory/# out`) should have "
        "carried it to the cloud.",
    )
    assert message.topic == expected, (
        f"The site's {local} arrived in the cloud as {message.topic}; it should be {expected}. "
        'A bridge remaps topics with its prefixes: `topic factory/# out 1 "" sites/{site}/` '
        "puts each site's tree under its own name, so the cloud can tell the plants apart. "
        "Add the remote prefix `sites/{site}/` to the `out` topic line."
    )


@pytest.mark.solution
def test_cloud_commands_reach_the_site_only_on_command_topics(student_bridge, mqtt_client):
    pair = student_bridge
    marker = uuid.uuid4().hex[:8]
    site = client_on(mqtt_client, pair.site)
    site.subscribe("factory/#", qos=1)
    cloud = client_on(mqtt_client, pair.cloud)
    prefix = f"sites/{pair.site_name}/factory"
    command = {"command": "stop", "reason": f"lesson 10 {marker}"}
    cloud.publish(f"{prefix}/commands/cloud/press-01", validate("command", command), qos=1)
    arrived = site.wait_for_message(
        carrying(marker),
        timeout=5,
        why=f"The cloud published a command on {prefix}/commands/cloud/press-01; the bridge's "
        '`topic factory/commands/cloud/# in 1 "" sites/{site}/` should bring it to the site.',
    )
    assert arrived.topic == "factory/commands/cloud/press-01", (
        f"The cloud's command arrived on the site as {arrived.topic}; the bridge removes the "
        "remote prefix on the way in, so it should be factory/commands/cloud/press-01."
    )

    stray = uuid.uuid4().hex[:8]
    fake = marked_alarm("press-01", stray)
    cloud.publish(f"{prefix}/alarms/press-01/temperature", fake, qos=1)
    cloud.publish(f"{prefix}/state/press-01", {"state": f"injected {stray}"}, qos=1)
    # A command sent after the strays, as a witness: once it is here, they would be too.
    witness = {"command": "start", "reason": f"lesson 10 witness {stray}"}
    cloud.publish(f"{prefix}/commands/cloud/press-01", validate("command", witness), qos=1)
    site.wait_for_message(
        lambda m: b"witness" in m.payload and stray.encode() in m.payload,
        timeout=5,
        why="The cloud's second command (the witness) should reach the site like the first.",
    )
    leaked = [m for m in site.received(carrying(stray)) if b"witness" not in m.payload]
    assert not leaked, (
        "Only commands addressed to the site may come in from the cloud, but the bridge also "
        f"brought in {leaked[0].topic} (published in the cloud on {prefix}/...). A bridge "
        "carries in whatever its `in`/`both` patterns match: `topic factory/# both` lets "
        "every cloud topic under the prefix into the plant. Bridge `factory/#` **out** and "
        "only `factory/commands/cloud/#` **in**."
    )


@pytest.mark.solution
@pytest.mark.spec(mqtt311=["MQTT-3.8.4-6"])
@pytest.mark.parametrize(
    ("kind", "qos"),
    [pytest.param("telemetry", 0, id="telemetry-qos0"), pytest.param("alarms", 1, id="alarm-qos1")],
)
def test_bridge_keeps_each_message_qos(student_bridge, mqtt_client, kind, qos):
    pair = student_bridge
    marker = uuid.uuid4().hex[:8]
    cloud = client_on(mqtt_client, pair.cloud)
    cloud.subscribe("#", qos=2)
    site = client_on(mqtt_client, pair.site)
    payload = (
        marked_alarm("oven-01", marker) if kind == "alarms" else marked_reading("oven-01", marker)
    )
    site.publish(f"factory/{kind}/oven-01/temperature", payload, qos=qos)
    message = cloud.wait_for_message(
        carrying(marker), timeout=5, why=f"The site's {kind} should cross the bridge."
    )
    assert message.qos == qos, (
        f"A QoS {qos} {kind} message published on the site arrived in the cloud at QoS "
        f"{message.qos} (subscriber granted QoS 2). The bridge forwards at the lower of the "
        "message's QoS and its `topic` line's QoS: with `qos 0` every alarm becomes 'at most "
        "once' on the link most likely to fail. Give the out topic line QoS 1 "
        "(`topic factory/# out 1 ...`)."
    )


@pytest.mark.solution
@pytest.mark.broker_needs(RESTART)
@pytest.mark.spec(mqtt311=["MQTT-3.1.2-4", "MQTT-3.1.2-5"])
def test_qos1_messages_published_while_the_cloud_is_away_arrive_when_it_returns(
    cloud_outage, request
):
    run = judged(request, cloud_outage)
    kept = run.back.received(lambda m: carrying(run.marker)(m) and "/alarms/" in m.topic)
    assert kept[0].qos == 1
    lost = [m for m in run.back.received(carrying(run.marker)) if "/telemetry/" in m.topic]
    assert not lost, (
        "The QoS 0 reading published during the outage arrived after it: a broker does not queue "
        "QoS 0 messages for a disconnected client (Mosquitto's queue_qos0_messages false), so "
        f"it should be gone. Got {lost[0].describe()}."
    )


@pytest.mark.solution
@pytest.mark.broker_needs(RESTART)
@pytest.mark.spec(mqtt311=["MQTT-3.1.2-8", "MQTT-3.3.1-5"])
def test_bridge_state_is_retained_on_its_notification_topic(student_bridge, mqtt_client):
    pair = student_bridge
    topic = f"sites/{pair.site_name}/bridge/state"
    dashboard = client_on(mqtt_client, pair.cloud)
    dashboard.subscribe(topic, qos=1)
    up = dashboard.wait_for_message(
        topic,
        timeout=5,
        why=f"A connected bridge publishes `1`, retained, on its notification topic {topic} "
        "(`notifications true`, `notification_topic sites/{site}/bridge/state`).",
    )
    assert up.payload == b"1" and up.retain, (
        f"The bridge's state on {topic} should be `1` and retained while it is connected; the "
        f"cloud has {up.describe()}."
    )
    pair.site.kill()  # the site broker dies: no DISCONNECT reaches the cloud
    down = dashboard.wait_for_message(
        lambda m: m.topic == topic and m.payload == b"0",
        timeout=10,
        why="The site broker was killed. Its bridge connected to the cloud with a Last Will "
        f"`0` on {topic}, so the cloud broker itself should publish that the site is gone.",
    )
    late = client_on(mqtt_client, pair.cloud)
    late.subscribe(topic, qos=1)
    stored = late.wait_for_message(topic, timeout=5, why="The bridge's state is retained.")
    assert down.payload == b"0" and stored.payload == b"0" and stored.retain, (
        f"After the site broker died, a dashboard opened later should find `0` retained on "
        f"{topic}; it found {stored.describe()}."
    )


@pytest.mark.solution
def test_no_message_comes_back_across_the_bridge(solution_echo, request):
    run = judged(request, solution_echo)
    site, cloud, marker = run.site, run.cloud, run.marker
    copies = len(site.received(carrying(marker)))
    in_cloud = len(cloud.received(carrying(marker)))
    assert copies == 1 and in_cloud == 1, (
        f"The command published once on the site was seen {copies} time(s) on the site and "
        f"{in_cloud} time(s) in the cloud: it went out, and the cloud sent it back to the bridge, "
        "which is subscribed there to a topic it also publishes to — a loop. On MQTT 3.1.1 keep "
        "`try_private true` (Mosquitto then knows the bridge and echoes nothing back); on MQTT 5 "
        "use `bridge_protocol_version mqttv50`, whose subscriptions carry No Local. And do not "
        "bridge `#` both ways."
    )


# -- how brokers prevent loops --------------------------------------------------------------

LOOP_BRIDGE = """
connection cloud
address {{cloud_host}}:{{cloud_port}}
remote_clientid {{site}}-bridge
restart_timeout 1 1
notification_topic sites/{{site}}/bridge/state
{settings}
topic factory/# out 1 "" sites/{{site}}/
topic factory/commands/cloud/# in 1 "" sites/{{site}}/
"""


@pytest.mark.broker
@pytest.mark.parametrize(
    ("settings", "copies", "why"),
    [
        pytest.param(
            "bridge_protocol_version mqttv311\ntry_private true",
            1,
            "on MQTT 3.1.1 the private bit in the bridge's CONNECT tells a Mosquitto cloud that "
            "this client is a bridge, and the cloud never sends a bridge its own messages",
            id="mqtt311-try_private",
            # Mosquitto's own extension (bridges are in no specification): observed, not failed
            marks=pytest.mark.rule("may"),
        ),
        pytest.param(
            "bridge_protocol_version mqttv50\ntry_private false",
            1,
            "an MQTT 5 bridge subscribes with the No Local option, which every MQTT 5 broker "
            "honours: no message goes back to the connection that published it",
            id="mqtt5-no-local",
            marks=pytest.mark.spec(mqtt5=["MQTT-3.8.3-3"]),
        ),
        pytest.param(
            "bridge_protocol_version mqttv311\ntry_private false",
            2,
            "an MQTT 3.1.1 bridge the cloud takes for an ordinary client gets its own messages "
            "back wherever its in and out patterns overlap: the site sees the command twice",
            id="mqtt311-plain-client-echoes",
            # MQTT 3.1.1 numbers no statement for it: it has no No Local, so nothing forbids it
            marks=pytest.mark.rule("may"),
        ),
    ],
)
def test_how_a_bridge_avoids_getting_its_own_messages_back(
    loop_window, request, settings, copies, why
):
    run = judged(request, loop_window)
    site, marker = run.site, run.marker
    seen = len(site.received(carrying(marker)))
    assert seen == copies, (
        f"With `{settings.replace(chr(10), '`, `')}` the site should see the command {copies} "
        f"time(s): {why}. It saw it {seen} time(s)."
    )
