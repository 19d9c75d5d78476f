"""Lesson 11 — Observability: what the broker says about itself, and a factory on a graph.

A plant that "seems slow" needs numbers: how many clients are connected, how many
messages flow, which press went offline at 03:12 and how many alarms it raised before.
Two sources give them.

**The broker's ``$SYS`` topics.** Mosquitto publishes figures about itself under
``$SYS/broker/`` every ``sys_interval`` seconds (default 10): ``clients/connected``,
``messages/received`` and ``messages/sent`` (since start), ``retained messages/count``,
``uptime`` (``"42 seconds"``), ``version``... Topics starting with ``$`` are the broker's,
not the application's, and **a subscription to ``#`` or ``+/...`` does not match them**
(MQTT 3.1.1 and 5, §4.7.2, MQTT-4.7.2-1): a catch-all logger does not drown in broker
statistics, and a client must ask for ``$SYS/#`` explicitly. ``$SYS`` is a convention,
not part of the standard: names and intervals differ between brokers.

**An exporter.** Prometheus *scrapes*: every few seconds it fetches ``/metrics`` over
HTTP from each target and stores the numbers as time series; Grafana graphs them. An
MQTT exporter is a subscriber that turns the factory's messages into those numbers
(``python -m sim.exporter``, written with the ``prometheus-client`` library):

* **Gauges** for what *is*: ``factory_device_online{device="press"} 1`` from the retained
  status — and ``0`` the moment the status says ``offline``, whether the device said so
  or the broker published its Last Will (lesson 04); the current state; each sensor's last
  reading.
* **Counters** for what *happened*: ``factory_alarms_raised_total``, messages by type and
  QoS. A counter only goes up; Prometheus computes rates from it (``rate(...[1m])``).
* **Count events, not deliveries.** QoS 1 is *at least once*: a publisher that missed a
  PUBACK sends the alarm again, a reconnect redelivers unacknowledged messages. An
  exporter that counts deliveries shows two alarms where the press raised one. It must
  recognise the alarm it already counted (the factory's alarm is identified by
  ``device_id``, ``sensor`` and ``ts``).
* The broker's ``$SYS`` figures are mirrored as ``mqtt_broker_*``; the data center's
  lag and dead letters (``--datacenter-db``) as ``factory_datacenter_*``.
  ``docs/observability.md`` lists every metric, a Prometheus scrape configuration and a
  Grafana dashboard.

Pitfalls:

* Expecting ``#`` to show ``$SYS``: it never does; subscribe to ``$SYS/#`` as well.
* ``online`` from the ``online`` message only: a crashed device stays "up" for ever on
  the dashboard. The Last Will is a status message like any other.
* Counting every delivery of a QoS 1 message as a new event.
* Labels with unbounded values (a reading's value, a message id): every new value is a
  new time series, and Prometheus runs out of memory.

MQTT 3.1.1 §4.7.2; MQTT 5 §4.7.2; mosquitto(8) "Broker status"; mosquitto.conf(5)
``sys_interval``; the Prometheus text exposition format.

Try it, with the broker of ``docker compose up``::

    python -m sim.cli sub --topic '$SYS/broker/#' --verbose       # the broker's own figures
    python -m sim.run_all --no-dashboard --metrics-port 9108        # the factory and its exporter
    curl -s localhost:9108/metrics | grep '^factory_'
    kill -9 <a device's pid>; curl -s localhost:9108/metrics | grep online

Your programs in this lesson: ``[roles.exporter]`` of your manifest, started with
``{metrics_port}`` and ``{client_id}``; it prints ``ready {client_id}`` once subscribed
and serves ``http://127.0.0.1:{metrics_port}/metrics`` with at least
``factory_device_online``, ``factory_device_state``, ``factory_telemetry_value``,
``factory_alarms_raised_total``, ``factory_messages_total`` and the ``mqtt_broker_*``
figures, labelled as ``docs/observability.md`` says. ``[roles.device]`` runs beside it.

Run it: ``pytest labs/11_observability.py -v``; grade an exporter with
``pytest labs/11_observability.py -m solution --solution path/to/solution.toml``.
"""

from __future__ import annotations

import contextlib
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mqtt_factory_lab.brokers import CONFIG, Broker
from mqtt_factory_lab.brokers.base import free_port
from mqtt_factory_lab.contract import validate
from mqtt_factory_lab.core.bridge import close_brokers
from mqtt_factory_lab.core.client import RecordingClient
from mqtt_factory_lab.core.factory import FactoryLauncher
from mqtt_factory_lab.core.process import ProcessTimeout, wait_until
from mqtt_factory_lab.core.roles import RoleProcess
from mqtt_factory_lab.core.solution import Solution
from mqtt_factory_lab.experiment.ahead import (
    Ahead,
    AheadCases,
    ModuleClients,
    ahead_scope,
    case_run,
    judged_by,
    launchers,
    params_of,
    users,
)
from mqtt_factory_lab.fixtures.brokers import (
    BROKERS_USED,
    BrokerPool,
    broker_or_fail,
    skip_what_the_module_cannot_run,
)
from mqtt_factory_lab.fixtures.factory import LAUNCHERS, or_fail

pytestmark = pytest.mark.lesson(11)

#: the $SYS figures every experiment reads, and what they mean
SYS_FIGURES = {
    "$SYS/broker/clients/connected": "clients connected now",
    "$SYS/broker/messages/received": "messages received since start",
    "$SYS/broker/messages/sent": "messages sent since start",
    "$SYS/broker/retained messages/count": "retained messages stored",
    "$SYS/broker/uptime": "seconds since start",
}
#: a SIGKILLed device's socket is closed by the kernel, so its will is due at once; the lab
#: allows 1.5 × the shortest keepalive plus Mosquitto's sweep, as lesson 04 does
KILL_BUDGET = 1.5 * 1 + 7.0


# -- helpers --------------------------------------------------------------------------


class Scrape:
    """One ``/metrics`` page, parsed by ``prometheus_client.parser``."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [s for f in text_string_to_metric_families(text) for s in f.samples]

    def value(self, name: str, **labels: str) -> float | None:
        for sample in self.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
        return None

    def names(self) -> set[str]:
        return {s.name for s in self.samples}


def scrape(port: int) -> Scrape:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        return Scrape(response.read().decode())


def scrape_until(
    exporter: RoleProcess, port: int, condition: Callable[[Scrape], bool], timeout: float, why: str
) -> Scrape:
    """Scrape until ``condition`` holds; fail with ``why`` and the last page's relevant lines."""
    __tracebackhide__ = True
    last: list[Scrape] = []

    def check() -> bool:
        try:
            page = scrape(port)
        except (urllib.error.URLError, OSError, ValueError):
            return False
        last[:] = [page]
        return condition(page)

    with contextlib.suppress(ProcessTimeout):
        wait_until(check, timeout, interval=0.1, stop_early=lambda: not exporter.is_running())
    if last and condition(last[0]):
        return last[0]
    if not exporter.is_running():
        pytest.fail(exporter.describe_failure("exited"), pytrace=False)
    lines = [
        "    " + line
        for line in (last[0].text.splitlines() if last else [])
        if line.startswith(("factory_", "mqtt_broker_"))
    ]
    if not last:
        shown = "    (it served no parsable /metrics page)"
    elif not lines:
        shown = "    (none: its page has no factory_ or mqtt_broker_ sample yet)"
    else:
        shown = "\n".join(lines)[:1500]
    pytest.fail(f"{why}\n  the exporter's metrics:\n{shown}", pytrace=False)


def start_sys_broker(
    request: pytest.FixtureRequest, pool: BrokerPool, stack: contextlib.ExitStack
) -> Broker:
    """A broker that publishes its $SYS figures every second, closed with ``stack``.

    Closed promptly (``close_brokers``): an idle Mosquitto acts on SIGTERM only when its
    100 ms wait for sockets ends.
    """
    skip_what_the_module_cannot_run(request, pool, "sys")
    broker = broker_or_fail(lambda: pool.start("sys"))
    stack.callback(pool.release, broker)
    stack.callback(close_brokers, [broker])
    return broker


# -- Runs started ahead --------------------------------------------------------------------
# Mosquitto publishes $SYS when ``now - sys_interval > last_update`` in whole seconds
# (sys_tree.c): with ``sys_interval 1`` a round every 2 s. Each $SYS experiment needs a round
# after its clients connected, and each exporter experiment an exporter that is up. On a serial
# run every experiment's run starts at the module's first experiment, on a broker of its own,
# and they wait side by side (mqtt_factory_lab.experiment.ahead.AheadCases); the experiment
# judges its own run.


@dataclass
class SysRun:
    """What a $SYS run's clients received, for the experiment that judges it."""

    broker: Broker
    clients: dict[str, RecordingClient]


def judged(request: pytest.FixtureRequest, ahead: Ahead[SysRun]) -> SysRun:
    """The run's result; a failure report shows its broker's whole log."""
    __tracebackhide__ = True
    run = ahead.result()
    remember(request, run.broker)
    return run


def remember(request: pytest.FixtureRequest, broker: Broker) -> None:
    """A failure report of the experiment shows ``broker``'s whole log (a run's own broker)."""
    used = request.node.stash.get(BROKERS_USED, [])
    request.node.stash[BROKERS_USED] = [*used, (broker, 0)]


def sys_figures_run(stack: contextlib.ExitStack, request, pool) -> SysRun:
    """A watcher of $SYS/broker/# beside a publisher of one retained message."""
    broker = start_sys_broker(request, pool, stack)
    clients = ModuleClients(broker, "lesson11-sys")
    stack.callback(clients.close)
    watcher = clients()
    publisher = clients()
    publisher.publish(f"lab/{uuid.uuid4().hex[:8]}/state/press", b"running", 1, retain=True)
    watcher.subscribe("$SYS/broker/#", qos=0)
    for topic, meaning in SYS_FIGURES.items():
        watcher.wait_for_message(
            topic,
            timeout=5,
            why=f"Mosquitto publishes {topic} ({meaning}) every sys_interval seconds (1 s "
            "on this broker); a client must subscribe to $SYS/# to get it.",
        )
    # The first values came from the broker's store; the next round counts these clients.
    for topic, at_least, what in (
        ("$SYS/broker/clients/connected", 2, "the watcher and the publisher are connected"),
        ("$SYS/broker/retained messages/count", 1, "a retained message was published"),
    ):
        watcher.wait_for_message(
            lambda m, t=topic, n=at_least: m.topic == t and int(m.text) >= n,
            timeout=5,
            why=f"{what}, so within a sys_interval (1 s) {topic} should say at least "
            f"{at_least}; it said: {[m.text for m in watcher.received(topic)]}.",
        )
    return SysRun(broker, {"watcher": watcher})


def wildcard_watchers_run(stack: contextlib.ExitStack, request, pool, protocol: str) -> SysRun:
    """Subscribers to ``#``, ``+/broker/#`` and ``$SYS/#`` on one MQTT version, through a round."""
    broker = start_sys_broker(request, pool, stack)
    clients = ModuleClients(broker, f"lesson11-hash-{protocol}")
    stack.callback(clients.close)
    everything = clients(protocol=protocol)
    everything.subscribe("#", qos=0)
    plus = clients(protocol=protocol)
    plus.subscribe("+/broker/#", qos=0)
    explicit = clients(protocol=protocol)
    explicit.subscribe("$SYS/#", qos=0)
    explicit.wait_for_messages(
        len(SYS_FIGURES), "$SYS/#", timeout=5, why="$SYS/# gets the broker's figures."
    )
    # A $SYS round has gone by too once the explicit subscriber sees more of them.
    first = len(explicit.received())
    explicit.wait_for_messages(first + len(SYS_FIGURES), "$SYS/#", timeout=5)
    for client in (everything, plus):
        client.sync()
    return SysRun(broker, {"#": everything, "+/broker/#": plus})


@pytest.fixture(scope=ahead_scope, autouse=True)
def sys_runs(request, broker_pool) -> Iterator[AheadCases]:
    """The module's $SYS runs, one per experiment case; on a serial run all start now."""
    solution: list = []
    if users(request, "exporter"):
        try:
            solution.append(request.getfixturevalue("solution"))
        except pytest.fail.Exception as error:
            solution.append(error)

    def exporter_of_the_solution(stack: contextlib.ExitStack, params: dict) -> ExporterRun:
        if isinstance(solution[0], BaseException):
            raise solution[0]  # no solution to run: each of its experiments says so
        return exporter_run(stack, request, broker_pool, solution[0])

    cases = AheadCases(
        request,
        {
            "sys_figures": lambda stack, p: sys_figures_run(stack, request, broker_pool),
            "wildcard_watchers": lambda stack, p: wildcard_watchers_run(
                stack, request, broker_pool, p["protocol"]
            ),
            "exporter": exporter_of_the_solution,
        },
    )
    with cases:
        yield cases


sys_figures = case_run("sys_figures", "sys_runs")
wildcard_watchers = case_run("wildcard_watchers", "sys_runs")
judged_by("exporter")


@dataclass
class ExporterRun:
    """The solution's exporter, ready, on a $SYS broker of its own."""

    launcher: FactoryLauncher
    process: RoleProcess
    port: int


def exporter_run(stack: contextlib.ExitStack, request, pool, solution: Solution) -> ExporterRun:
    """Start the solution's exporter on a $SYS broker. The broker comes first, so it stops
    last: programs stop while it still answers."""
    broker = start_sys_broker(request, pool, stack)
    (launcher,) = launchers(request.config, solution, broker, ["5"]).values()
    stack.enter_context(launcher)
    port = free_port()
    process = launcher.start_role("exporter", f"exporter-{uuid.uuid4().hex[:6]}", metrics_port=port)
    return ExporterRun(launcher, process, port)


@pytest.fixture
def exporter(
    request: pytest.FixtureRequest, sys_runs: AheadCases
) -> Iterator[Callable[[], tuple[FactoryLauncher, RoleProcess, int]]]:
    """The experiment's exporter, started ahead: ``launcher, process, port = exporter()``
    (a program that would not start fails the experiment with its output)."""
    key = sys_runs.start("exporter", params_of(request.node))

    def start() -> tuple[FactoryLauncher, RoleProcess, int]:
        __tracebackhide__ = True
        run = sys_runs.run(key).result()
        # a failure report shows the exporter's output and its broker's whole log
        request.node.stash[LAUNCHERS] = [run.launcher]
        remember(request, run.launcher.broker)
        return run.launcher, run.process, run.port

    yield start
    sys_runs.finish(key)


def alarm(device: str, ts: float, value: float = 231.5) -> dict:
    return validate(
        "alarm",
        {
            "ts": ts,
            "device_id": device,
            "sensor": "temperature",
            "state": "raised",
            "value": value,
            "low": 20.0,
            "high": 220.0,
            "severity": "critical",
            "message": "lesson 11",
        },
    )


# -- the broker's own figures ---------------------------------------------------------------


@pytest.mark.broker
@pytest.mark.broker_needs(CONFIG)
@pytest.mark.rule("may")  # $SYS is a convention of brokers, not of the specifications
def test_sys_topics_report_clients_messages_retained_and_uptime(sys_figures, request):
    watcher = judged(request, sys_figures).clients["watcher"]
    for topic in SYS_FIGURES:
        message = watcher.received(topic)[0]
        figure = message.text.split()[0]
        assert figure.isdigit(), f"{topic} should be a number, got {message.text!r}"


@pytest.mark.broker
@pytest.mark.broker_needs(CONFIG)
@pytest.mark.spec("MQTT-4.7.2-1")
def test_hash_subscription_does_not_receive_sys_topics(wildcard_watchers, request, protocol):
    run = judged(request, wildcard_watchers)
    for pattern, client in run.clients.items():
        leaked = [m for m in client.received() if m.topic.startswith("$")]
        assert not leaked, (
            f"A subscription to {pattern} received {leaked[0].topic}. A topic filter starting "
            "with a wildcard must not match topic names starting with $ (MQTT-4.7.2-1): the "
            "broker's $SYS topics are only for subscribers who ask for them by name."
        )


# -- the solution's exporter -----------------------------------------------------------------


@pytest.mark.solution
@pytest.mark.broker_needs(CONFIG)
def test_exporter_exposes_the_factory_and_the_broker(exporter):
    launcher, process, port = exporter()
    press = or_fail(lambda: launcher.start_device("press", "press-01"))
    page = scrape_until(
        process,
        port,
        lambda p: (
            p.value("factory_device_online", device="press-01") == 1
            and p.value("factory_telemetry_value", device="press-01") is not None
            and p.value("mqtt_broker_clients_connected") is not None
        ),
        timeout=8,
        why="The press is online and publishing. The exporter should show "
        'factory_device_online{device="press-01"} 1 (from its retained status), its readings '
        'as factory_telemetry_value{device="press-01",sensor=...,unit=...} and the broker\'s '
        "$SYS figures (subscribe to $SYS/broker/# too: `#` does not get them).",
    )
    state = page.value("factory_device_state", device="press-01", factory_device_state="running")
    assert state == 1, (
        'factory_device_state{device="press-01",factory_device_state="running"} should be 1 '
        f"while the press's retained state is running; it is {state}."
    )
    missing = sorted(
        {
            "factory_messages_total",
            "mqtt_broker_messages_received_total",
            "mqtt_broker_messages_sent_total",
            "mqtt_broker_retained_messages",
            "mqtt_broker_uptime_seconds",
        }
        - page.names()
    )
    assert not missing, (
        f"The exporter does not expose {', '.join(missing)} (docs/observability.md)."
    )
    telemetry = page.value("factory_messages_total", type="telemetry", qos="0")
    assert telemetry and telemetry > 0, (
        'factory_messages_total{type="telemetry",qos="0"} should count the press\'s readings '
        f"(QoS 0); it is {telemetry}."
    )
    assert press.process.is_running()


@pytest.mark.solution
@pytest.mark.broker_needs(CONFIG)
def test_killed_device_shows_online_0_within_its_keepalive_budget(exporter):
    launcher, process, port = exporter()
    oven = or_fail(lambda: launcher.start_device("oven", "oven-01"))
    scrape_until(
        process,
        port,
        lambda p: p.value("factory_device_online", device="oven-01") == 1,
        timeout=5,
        why='The oven is online: factory_device_online{device="oven-01"} should be 1.',
    )
    oven.kill()  # SIGKILL: the broker publishes its Last Will, offline, retained
    started = time.monotonic()
    scrape_until(
        process,
        port,
        lambda p: p.value("factory_device_online", device="oven-01") == 0,
        timeout=KILL_BUDGET,
        why=f"The oven was killed (SIGKILL); the broker published its Last Will "
        f'({{"status": "offline", "reason": "last-will"}}) on its status topic, but '
        f'factory_device_online{{device="oven-01"}} did not drop to 0 within {KILL_BUDGET:g}s. '
        "The Last Will is a status message like the device's own: set online from every "
        "status payload, offline included.",
    )
    assert time.monotonic() - started <= KILL_BUDGET + 1


@pytest.mark.solution
@pytest.mark.broker_needs(CONFIG)
def test_an_alarm_counts_once_however_often_it_is_delivered(exporter, mqtt_client):
    launcher, process, port = exporter()
    topic = f"{launcher.topic_root}/alarms/robot-arm-01/temperature"
    publisher = mqtt_client(broker=launcher.broker)
    raised = alarm("robot-arm-01", time.time())
    # A publisher that missed its PUBACK sends the same alarm again: QoS 1 is at least once.
    publisher.publish(topic, raised, qos=1)
    publisher.publish(topic, raised, qos=1)
    publisher.publish(topic, alarm("robot-arm-01", time.time() + 1, 240.0), qos=1)
    labels = {"device": "robot-arm-01", "sensor": "temperature"}
    page = scrape_until(
        process,
        port,
        lambda p: (
            (p.value("factory_messages_total", type="alarms", qos="1") or 0) >= 3
            and p.value("factory_alarms_raised_total", **labels) is not None
        ),
        timeout=5,
        why="Three alarm deliveries (two of the same alarm) were published at QoS 1: the "
        'exporter should count them in factory_messages_total{type="alarms",qos="1"} and '
        'factory_alarms_raised_total{device="robot-arm-01",sensor="temperature",...}.',
    )
    counted = page.value("factory_alarms_raised_total", **labels)
    assert counted == 2, (
        f"Two alarms were raised, one of them delivered twice, and factory_alarms_raised_total "
        f"says {counted:g}. QoS 1 delivers at least once: a retry or a redelivery hands the same "
        "alarm over again. Count an alarm once, by its identity (device_id, sensor, ts), not "
        "once per delivery."
    )
