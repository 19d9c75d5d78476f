"""Lesson 11 (observability) grades exporters: it passes the reference and catches each broken
one in ``tests/broken/lesson11_*``; the Grafana dashboard and the exporter's contract agree."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sim.exporter import METRICS, FactoryMetrics
from sim.topics import Topics

LESSON = "labs/11_observability.py"
BROKEN = Path(__file__).parent / "broken"
DOCS = Path(__file__).resolve().parents[1] / "docs"
STARTER = Path(__file__).resolve().parents[1] / "starter"

EXPOSES = "test_exporter_exposes_the_factory_and_the_broker"
KILLED = "test_killed_device_shows_online_0_within_its_keepalive_budget"
ONCE = "test_an_alarm_counts_once_however_often_it_is_delivered"


def test_the_reference_exporter_passes_every_solution_experiment(run_lesson):
    run = run_lesson(LESSON, "-m", "solution")
    assert run.returncode == 0 and not run.failed(), run.output[-3000:]
    for experiment in (EXPOSES, KILLED, ONCE):
        assert run.passed(experiment), f"{experiment} did not run: {sorted(run.outcomes)}"


@pytest.mark.parametrize(
    ("broken", "catches", "says"),
    [
        pytest.param(
            "counts_redeliveries",
            ONCE,
            ["at least once", "Count an alarm once", "says 3"],
            id="counts-redeliveries",
        ),
        pytest.param(
            "online_never_drops",
            KILLED,
            ["Last Will", "did not drop to 0", "offline included"],
            id="online-never-drops",
        ),
    ],
)
def test_a_broken_exporter_fails_the_experiment_that_teaches_its_rule(
    run_lesson, broken, catches, says
):
    run = run_lesson(LESSON, "-m", "solution", solution=BROKEN / f"lesson11_{broken}")
    failed = {name.split("[")[0] for name in run.failed()}
    assert failed == {catches}, (
        f"{broken} should fail only {catches}: {failed}\n{run.output[-3000:]}"
    )
    message = run.message(catches)
    for words in says:
        assert words in message, f"{broken}: the failure should say {words!r}:\n{message}"
    assert "Traceback" not in message, message


def test_the_starter_exporter_fails_with_teaching_messages(run_lesson):
    run = run_lesson(LESSON, "-m", "solution", solution=STARTER)
    assert set(run.failed()) == {EXPOSES, KILLED, ONCE}, run.output[-3000:]
    # The starter's device forgets the retain flag (lesson 03), which the exporter lessons
    # need; its exporter has factory_device_online and nothing else yet.
    assert "without the retain flag" in run.message(EXPOSES), run.message(EXPOSES)
    assert "no factory_ or mqtt_broker_ sample" in run.message(ONCE), run.message(ONCE)
    for name in run.failed():
        assert "Traceback" not in run.message(name), run.message(name)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, keywords and labels left out)."""
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"by\s*\([^)]*\)", "", expr)  # grouping labels
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
    return {w for w in words if w.startswith(("factory_", "mqtt_broker_"))}


def panel_metrics(panel: dict) -> set[str]:
    return {n for target in panel["targets"] for n in metric_names(target["expr"])}


def panel_labels(expr: str) -> set[str]:
    """The label names a PromQL expression groups or filters by."""
    grouped = [w for g in re.findall(r"by\s*\(([^)]*)\)", expr) for w in g.split(",")]
    matched = re.findall(
        r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!=|!~|=)", "".join(re.findall(r"\{[^}]*\}", expr))
    )
    return {w.strip() for w in [*grouped, *matched] if w.strip()}


def test_every_grafana_panel_reads_a_metric_the_running_exporter_serves(
    sim_program, make_broker, mqtt_client, topic_root, tmp_path
):
    """The dashboard is checked against a live ``python -m sim.exporter``'s /metrics page, not
    against a list: a renamed metric or label breaks this test, as it would break Grafana."""
    from mqtt_factory_lab.brokers.base import free_port
    from mqtt_factory_lab.contract import validate
    from mqtt_factory_lab.core.process import ProcessTimeout, wait_until
    from sim.datacenter.storage import SCHEMA

    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    panels = dashboard["panels"]
    assert len(panels) >= 8, f"the dashboard has only {len(panels)} panels"
    wanted = set().union(*(panel_metrics(p) for p in panels))

    broker = make_broker("sys")  # $SYS every second
    db = tmp_path / "datacenter.db"
    with sqlite3.connect(db) as connection:
        connection.executescript(SCHEMA)
    port = free_port()
    exporter = sim_program(
        "sim.exporter", "--metrics-port", str(port), "--datacenter-db", str(db), broker=broker
    )
    sim_program("sim.device", "--device", "press", "--device-id", "press-01", broker=broker)
    alarm = {
        "ts": time.time(), "device_id": "press-01", "sensor": "temperature", "state": "raised",
        "value": 231.5, "low": 20.0, "high": 220.0, "severity": "critical", "message": "panel",
    }  # fmt: skip
    mqtt_client(broker=broker).publish(
        f"{topic_root}/alarms/press-01/temperature", validate("alarm", alarm), qos=1
    )

    samples: dict[str, set[str]] = {}  # sample name -> its label names

    def served_everything() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as page:
                text = page.read().decode()
        except OSError:  # not serving yet
            return False
        samples.clear()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.setdefault(sample.name, set()).update(sample.labels)
        return wanted <= set(samples)

    with contextlib.suppress(ProcessTimeout):
        wait_until(
            served_everything, 15, interval=0.2, stop_early=lambda: not exporter.is_running()
        )
    for panel in panels:
        assert panel_metrics(panel), f"panel {panel['title']!r} reads no factory metric"
        missing = panel_metrics(panel) - set(samples)
        assert not missing, (
            f"panel {panel['title']!r} reads {sorted(missing)}, which the running exporter does "
            f"not serve; it serves {sorted(samples)}\n{exporter.output()[-1500:]}"
        )
        for target in panel["targets"]:
            have = set().union(*(samples[name] for name in metric_names(target["expr"])))
            unknown = panel_labels(target["expr"]) - have
            assert not unknown, (
                f"panel {panel['title']!r} groups or filters by {sorted(unknown)} in "
                f"{target['expr']!r}; the exporter's samples have the labels {sorted(have)}"
            )


def test_the_dashboard_and_the_docs_cover_every_metric_of_the_contract():
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    used = set().union(*(panel_metrics(p) for p in dashboard["panels"]))
    assert used == set(METRICS), (
        f"metrics no panel shows: {set(METRICS) - used}; panels reading metrics outside the "
        f"contract (sim/exporter.py METRICS): {used - set(METRICS)}"
    )
    text = (DOCS / "observability.md").read_text()
    for name in METRICS:
        assert f"`{name}`" in text, f"docs/observability.md does not document {name}"


class Message:
    def __init__(self, topic: str, payload: object, qos: int = 1) -> None:
        self.topic, self.qos = topic, qos
        self.payload = payload if isinstance(payload, bytes) else json.dumps(payload).encode()


def exposed(metrics: FactoryMetrics) -> dict[str, float]:
    text = generate_latest(metrics.registry).decode()
    return {
        f"{s.name}{sorted(s.labels.items())}": s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_exporter_mirrors_sys_figures_and_the_datacenter_database(tmp_path):
    from sim.datacenter.storage import SCHEMA

    db = tmp_path / "dc.db"
    with sqlite3.connect(db) as connection:
        connection.executescript(SCHEMA)
        connection.execute(
            "INSERT INTO mqtt_messages (msg_key, topic, payload, qos, retain, received_at)"
            " VALUES ('k', 't', '{}', 1, 0, ?)",
            (time.time() - 30,),
        )
        connection.execute(
            "INSERT INTO dead_letters (msg_key, topic, payload, qos, retain, reason, received_at)"
            " VALUES ('d', 't', x'00', 1, 0, 'not JSON', 0)"
        )
    metrics = FactoryMetrics(Topics("factory"), datacenter_db=db)
    metrics.on_message(Message("$SYS/broker/uptime", b"42 seconds"))
    metrics.on_message(Message("$SYS/broker/messages/received", b"7"))
    metrics.on_message(
        Message("factory/status/press", {"device_id": "press", "status": "online", "ts": 1})
    )
    metrics.on_message(Message("factory/status/press", b"not json"))  # ignored, counted
    seen = exposed(metrics)
    assert seen["mqtt_broker_uptime_seconds[]"] == 42
    assert seen["mqtt_broker_messages_received_total[]"] == 7
    assert seen["factory_device_online[('device', 'press')]"] == 1
    assert seen["factory_messages_total[('qos', '1'), ('type', 'status')]"] == 2
    assert seen["factory_datacenter_dead_letters[]"] == 1
    assert 29 <= seen["factory_datacenter_lag_seconds[]"] <= 60


def test_run_all_starts_the_exporter_with_the_factory(sim_program):
    import urllib.request

    from mqtt_factory_lab.brokers.base import free_port
    from mqtt_factory_lab.core.process import wait_until

    port = free_port()
    factory = sim_program(
        "sim.run_all",
        *("--devices", "press,oven", "--no-observer", "--no-dashboard"),
        *("--metrics-port", str(port)),
        ready_timeout=40,
        stop_timeout=15,
    )
    pages: list[str] = []

    def both_online() -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            pages[:] = [response.read().decode()]
        samples = [s for f in text_string_to_metric_families(pages[0]) for s in f.samples]
        online = {s.labels["device"] for s in samples if s.name == "factory_device_online"}
        return online >= {"press", "oven"}

    wait_until(both_online, 15, interval=0.2)
    assert "run_all: started exporter as pid" in factory.output(), factory.output()


def test_the_sandbox_runs_the_exporter_with_the_factory_when_asked():
    from mqtt_factory_lab.sandbox.plan import Options, programs

    def factory_argv(options: Options) -> list[str]:
        return next(p.argv for p in programs(options, Path("db")) if p.name == "factory")

    assert "--metrics-port" not in factory_argv(Options())
    argv = factory_argv(Options(metrics_port=9108))
    assert argv[argv.index("--metrics-port") + 1] == "9108", argv
