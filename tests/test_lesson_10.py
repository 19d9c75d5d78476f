"""Lesson 10 (bridges) grades bridge configurations: it passes the reference and catches each
broken one in ``tests/broken/lesson10_*`` with a message naming the concept."""

from __future__ import annotations

from pathlib import Path

import pytest

from mqtt_factory_lab.brokers.config import BrokerConfigError
from mqtt_factory_lab.core.bridge import BRIDGE_TEMPLATE, BrokerPair, render_bridge

LESSON = "labs/10_bridge.py"
BROKEN = Path(__file__).parent / "broken"
STARTER = Path(__file__).resolve().parents[1] / "starter"

PREFIX = "test_site_topics_arrive_in_the_cloud_under_the_site_prefix"
DIRECTION = "test_cloud_commands_reach_the_site_only_on_command_topics"
QOS = "test_bridge_keeps_each_message_qos"
OUTAGE = "test_qos1_messages_published_while_the_cloud_is_away_arrive_when_it_returns"
STATE = "test_bridge_state_is_retained_on_its_notification_topic"
LOOP = "test_no_message_comes_back_across_the_bridge"
ALL = (PREFIX, DIRECTION, QOS, OUTAGE, STATE, LOOP)


def test_the_reference_bridge_passes_every_solution_experiment(run_lesson):
    run = run_lesson(LESSON, "-m", "solution")
    assert run.returncode == 0 and not run.failed(), run.output[-3000:]
    for experiment in ALL:
        assert run.passed(experiment), f"{experiment} did not run: {sorted(run.outcomes)}"


@pytest.mark.parametrize(
    ("broken", "catches", "says"),
    [
        pytest.param(
            "always_clean",
            {OUTAGE},
            ["cleansession true", "Set `cleansession false`", "queues its QoS 1"],
            id="cleansession-true",
        ),
        pytest.param(
            "no_remote_prefix",
            {PREFIX},
            ["remote prefix", "sites/{site}/", "tell the plants apart"],
            id="no-remote-prefix",
        ),
        # `#` both ways is two mistakes in one line: it lets every cloud topic in, and what
        # goes out comes back (the cloud takes the bridge for an ordinary client).
        pytest.param(
            "both_ways",
            {DIRECTION, LOOP},
            ["a loop", "try_private true", "No Local"],
            id="hash-both-ways",
        ),
    ],
)
def test_a_broken_bridge_fails_the_experiments_that_teach_its_rule(
    run_lesson, broken, catches, says
):
    run = run_lesson(LESSON, "-m", "solution", solution=BROKEN / f"lesson10_{broken}")
    failed = {name.split("[")[0] for name in run.failed()}
    assert failed == catches, (
        f"{broken} should fail exactly {sorted(catches)}; failed {sorted(failed)}\n"
        f"{run.output[-3000:]}"
    )
    messages = " ".join(run.message(name) for name in catches)
    for words in says:
        assert words in messages, f"{broken}: the failure should say {words!r}:\n{messages}"
    assert "Traceback" not in messages, messages
    if broken == "both_ways":
        assert "`topic factory/# both`" in run.message(DIRECTION), run.message(DIRECTION)


def test_the_starter_bridge_fails_on_its_todos_with_teaching_messages(run_lesson):
    todos = " or ".join(name.removeprefix("test_") for name in (PREFIX, DIRECTION, QOS, STATE))
    run = run_lesson(LESSON, "-m", "solution", "-k", todos, solution=STARTER)
    failed = {name.split("[")[0] for name in run.failed()}
    assert {PREFIX, DIRECTION, QOS, STATE} <= failed, f"{sorted(failed)}\n{run.output[-3000:]}"
    for name in run.failed():
        message = run.message(name)
        assert "Traceback" not in message and "bridge" in message, message


def test_the_lab_renders_the_cloud_address_into_a_bridge():
    text = render_bridge(
        BRIDGE_TEMPLATE.read_text(), cloud_host="cloud", cloud_port=1883, site="p1"
    )
    assert "address cloud:1883" in text
    assert 'topic factory/# out 1 "" sites/p1/' in text
    assert "{" not in text.replace('""', "")


def test_a_bridge_with_an_unknown_placeholder_or_no_address_is_refused_clearly():
    with pytest.raises(BrokerConfigError, match=r"\{cloud_ip\}.*knows \{cloud_host\}"):
        render_bridge(
            "connection c\naddress {cloud_ip}:1883\n", cloud_host="h", cloud_port=1, site="s"
        )
    with pytest.raises(BrokerConfigError, match="no `address` line"):
        render_bridge("connection c\ntopic # out\n", cloud_host="h", cloud_port=1, site="s")


# -- the docker backend's pair, without an engine -------------------------------------------


class EngineFreeClient:
    """Stands in for testcontainers' DockerClient, so a container can be built without an
    engine: the pair's wiring (network, alias, ports) is checked before anything starts."""

    def __init__(self, **_: object) -> None:
        pass

    def host(self) -> str:
        return "localhost"


@pytest.fixture
def docker_pair_built(monkeypatch):
    """``built(mode)``: a docker BrokerPair started up to the engine; ``(pair, containers)``."""
    import testcontainers.core.container

    monkeypatch.setattr(testcontainers.core.container, "DockerClient", EngineFreeClient)
    pairs = []

    def built(mode: str):
        pair = BrokerPair("docker", BRIDGE_TEMPLATE.read_text(), network=mode)
        pairs.append(pair)
        network = type("PairNetwork", (), {"name": f"pair-{mode}"})
        monkeypatch.setattr(pair, "network", lambda: network)
        containers = {}
        for broker in pair.brokers:
            monkeypatch.setattr(broker, "_run", lambda c, b=broker: containers.setdefault(b, c))
            monkeypatch.setattr(broker, "_wait_until_ready", lambda c, deadline: None)
        pair.start()
        return pair, containers

    yield built
    for pair in pairs:
        pair.close()


def test_on_a_docker_bridge_network_the_pair_has_a_network_and_the_site_dials_cloud(
    docker_pair_built,
):
    pair, containers = docker_pair_built("bridge")
    cloud, site = containers[pair.cloud], containers[pair.site]
    assert cloud._network.name == site._network.name == "pair-bridge", (
        "both containers must join the pair's own network, where the site reaches the cloud"
    )
    assert (cloud._network_aliases, site._network_aliases) == (["cloud"], ["site"])
    assert "address cloud:1883" in pair.bridge_config, pair.bridge_config
    # The lab's clients reach each broker at its own published loopback port.
    assert cloud.ports == {"1883": ("127.0.0.1", pair.cloud.port)}
    assert site.ports == {"1883": ("127.0.0.1", pair.site.port)}
    assert pair.cloud.port != pair.site.port


def test_on_docker_host_networking_the_site_dials_the_clouds_loopback_port(docker_pair_built):
    pair, containers = docker_pair_built("host")
    for container in containers.values():
        assert container._network is None and container._kwargs["network_mode"] == "host"
    assert f"address 127.0.0.1:{pair.cloud.port}" in pair.bridge_config, pair.bridge_config
    # ...where the cloud listens, on the host's loopback only; the bridge goes in with the site
    conf = pair.cloud.rendered.files["mosquitto.conf"].read_text()
    assert f"listener {pair.cloud.port} 127.0.0.1" in conf.splitlines(), conf
    assert "connection cloud" in pair.site.rendered.files["conf.d/zz-extra.conf"].read_text()


# -- closing a pair ---------------------------------------------------------------------------


def test_close_brokers_stops_local_brokers_and_closes_containers_alike():
    from mqtt_factory_lab.brokers import create_broker
    from mqtt_factory_lab.core import bridge

    class Container:  # a docker broker: no child process, closed by the engine
        host, port, closed = "127.0.0.1", 9, False

        def close(self) -> None:
            self.closed = True

    local = [create_broker("local", "open") for _ in range(2)]
    for broker in local:
        broker.start()
    container = Container()
    bridge.close_brokers([*local, container])

    assert container.closed and not any(b.is_running() for b in local)
