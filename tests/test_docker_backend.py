"""The docker backend: Mosquitto in a container behaves like the local broker.

The tests that start containers need a Docker engine. CI provides one, with an
image built offline from the installed mosquitto::

    bash .ci/with-docker-engine.sh .venv/bin/pytest tests/test_docker_backend.py -v

Elsewhere they run when Docker runs (with the pinned eclipse-mosquitto image)
and are skipped, saying so, when no engine answers. The first three tests
need no engine: they check how the backend is chosen and configured.
"""

from __future__ import annotations

import functools
import os
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mqtt_factory_lab.brokers.base import BrokerError, BrokerStartError, mqtt_ping
from mqtt_factory_lab.brokers.docker import (
    DEFAULT_IMAGE,
    IMAGE_ENV,
    LABEL,
    NETWORK_ENV,
    PID_LABEL,
    DockerMosquitto,
    docker_available,
)
from mqtt_factory_lab.core.client import RecordingClient

NO_ENGINE = "no Docker engine answers: run under .ci/with-docker-engine.sh or start Docker"


# -- without an engine -------------------------------------------------------------
def test_image_and_network_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """CI swaps in its offline image and host networking through two variables."""
    monkeypatch.delenv(IMAGE_ENV, raising=False)
    monkeypatch.delenv(NETWORK_ENV, raising=False)
    default = DockerMosquitto("open")
    default.close()
    assert (default.image, default.network) == (DEFAULT_IMAGE, "bridge"), (
        f"without {IMAGE_ENV}/{NETWORK_ENV} the backend should run the pinned {DEFAULT_IMAGE} "
        f"on a bridge network, not {default.image} on {default.network}"
    )
    monkeypatch.setenv(IMAGE_ENV, "example/mosquitto:test")
    monkeypatch.setenv(NETWORK_ENV, "host")
    chosen = DockerMosquitto("acl+persistent")
    chosen.close()
    assert (chosen.image, chosen.network) == ("example/mosquitto:test", "host")
    explicit = DockerMosquitto("open", image="other/mosquitto:1", network="bridge")
    explicit.close()
    assert (explicit.image, explicit.network) == ("other/mosquitto:1", "bridge"), (
        "arguments must win over the environment"
    )
    assert not explicit.workdir.exists(), "close() must remove the broker's temp folder"


def test_unknown_network_mode_names_the_choices() -> None:
    with pytest.raises(BrokerError, match=r"'overlay'.*bridge, host"):
        DockerMosquitto("open", network="overlay")


def test_unreachable_engine_is_reported_not_raised(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Backend auto-selection asks this first, so it must answer quickly and never raise."""
    socket = tmp_path / "no-engine-here.sock"
    monkeypatch.setenv("DOCKER_HOST", f"unix://{socket}")
    answer = docker_available(timeout=2)
    assert answer is not True, f"nothing listens on {socket}, yet docker_available() said True"
    assert str(socket) in answer, f"the reason should name where it looked: {answer!r}"


def test_a_machine_without_docker_is_told_so_without_asking_an_engine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No DOCKER_HOST, no docker context, no default socket: the answer comes without the
    docker SDK (every lesson run asks, when the backend is ``auto``)."""
    from mqtt_factory_lab.brokers import docker as docker_backend

    for name in ("DOCKER_HOST", "TESTCONTAINERS_DOCKER_SOCKET_OVERRIDE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-config"))
    monkeypatch.setattr(docker_backend, "DEFAULT_SOCKET", tmp_path / "docker.sock")
    answer = docker_available()
    assert answer is not True and str(tmp_path / "docker.sock") in answer, answer


# -- with an engine ------------------------------------------------------------------
@pytest.fixture(scope="module")
def docker_engine() -> None:
    answer = docker_available()
    if answer is not True:
        pytest.skip(f"{NO_ENGINE} ({answer})")


@pytest.fixture
def start_broker(
    docker_engine: None, direct_broker: Callable[..., Any]
) -> Callable[..., DockerMosquitto]:
    """``start_broker(variant, **options)``: a running container, removed after the test."""
    return functools.partial(direct_broker, DockerMosquitto)


def _client(broker: DockerMosquitto, name: str) -> RecordingClient:
    client = RecordingClient(
        broker.host,
        broker.port,
        f"docker-{name}-{uuid.uuid4().hex[:6]}",
        describe_broker=broker.health,
    )
    client.connect()
    return client


def _engine_containers(ids: list[str]) -> list[str]:
    """Which of these container ids the engine still knows (running or not)."""
    from testcontainers.core.docker_client import DockerClient

    client = DockerClient().client
    try:
        found = client.containers.list(all=True, filters={"label": f"{PID_LABEL}={os.getpid()}"})
        return [c.id for c in found if c.id in ids]
    finally:
        client.close()


def test_open_broker_relays_messages(
    start_broker: Callable[..., DockerMosquitto], topic_root: str
) -> None:
    broker = start_broker("open")
    assert broker.ready_seconds is not None and broker.ready_seconds < broker.start_timeout
    assert broker.wait_for_log(r"mosquitto version \S+ running", timeout=1)
    subscriber = _client(broker, "sub")
    publisher = _client(broker, "pub")
    try:
        subscriber.subscribe(f"{topic_root}/telemetry/#", qos=1)
        publisher.publish(f"{topic_root}/telemetry/press-01/temp", {"value": 21.5}, qos=1)
        message = subscriber.wait_for_message(f"{topic_root}/telemetry/#")
    finally:
        subscriber.disconnect()
        publisher.disconnect()
    assert message.json() == {"value": 21.5}, (
        f"the container at {broker.url} relayed {message.describe()} instead of the reading sent"
    )


@pytest.mark.parametrize(
    ("variant", "kept"),
    [("persistent", True), ("open", False)],
    ids=["persistent-keeps", "open-forgets"],
)
def test_restart_keeps_retained_only_with_persistence(
    start_broker: Callable[..., DockerMosquitto], topic_root: str, variant: str, kept: bool
) -> None:
    """``docker stop`` sends SIGTERM, so Mosquitto saves its database into the mounted data folder."""
    broker = start_broker(variant)
    topic = f"{topic_root}/state/press-01"
    publisher = _client(broker, "retainer")
    publisher.publish(topic, {"state": "running"}, qos=1, retain=True)
    publisher.disconnect()
    port, first = broker.port, broker.container_id

    broker.restart()

    assert broker.port == port, f"a restart must keep the port ({port}), clients reconnect to it"
    assert broker.container_id != first, "restart should run a new container on the same files"
    late = _client(broker, "late")
    try:
        late.subscribe(topic, qos=1)
        if kept:
            message = late.wait_for_message(topic)
            assert message.retain and message.json() == {"state": "running"}, (
                f"after a restart of the {variant!r} broker the late subscriber got "
                f"{message.describe()}"
            )
        else:
            late.assert_nothing_received(
                topic, why=f"the {variant!r} variant has persistence off: a restart forgets"
            )
    finally:
        late.disconnect()
    assert "mosquitto version" in broker.log() and broker.log().count(" running") >= 2, (
        "log() should hold the lines of both containers, the first one's before the restart"
    )


def test_broken_config_fails_with_the_broker_log(docker_engine: None) -> None:
    broker = DockerMosquitto("open", extra_config="this_option_does_not_exist 1\n")
    with pytest.raises(BrokerStartError) as caught, broker:
        pytest.fail("a configuration with an unknown option must not start")
    message = str(caught.value)
    assert 'Unknown configuration variable "this_option_does_not_exist"' in message, (
        f"the error should quote Mosquitto's own complaint, got:\n{message}"
    )
    assert broker.image in message and "what to do" in message, message
    assert not _engine_containers(broker.container_ids), "the failed container was left behind"


def test_missing_image_says_how_to_get_one(docker_engine: None) -> None:
    """No such image locally and none in any registry: the error must name it and the ways out."""
    image = f"mqtt-factory-lab/no-such-image:{uuid.uuid4().hex[:8]}"
    broker = DockerMosquitto("open", image=image)
    with pytest.raises(BrokerStartError) as caught, broker:
        pytest.fail(f"{image} does not exist, yet a broker started")
    message = str(caught.value)
    assert image in message and "docker pull" in message and IMAGE_ENV in message, message
    assert not broker.container_ids, "no container can have been created without an image"


def test_kill_ends_the_broker_without_saving(
    start_broker: Callable[..., DockerMosquitto],
) -> None:
    broker = start_broker("persistent")
    broker.kill()
    assert not broker.is_running(), "after docker kill the container must no longer run"
    assert "NOT running" in broker.health()
    assert not mqtt_ping(broker.host, broker.port, timeout=0.5), "a killed broker still answered"
    assert "terminating" not in broker.log(), (
        "SIGKILL gives Mosquitto no chance to log its shutdown (or save its database)"
    )
    broker.start()
    assert mqtt_ping(broker.host, broker.port), "start() after kill() should bring it back"


def test_close_leaves_no_labelled_container(docker_engine: None) -> None:
    with DockerMosquitto("acl+persistent") as broker:
        broker.restart()
        ids = list(broker.container_ids)
        assert _engine_containers(ids) == [broker.container_id], (
            "while running, exactly the current container should exist "
            f"(labelled {LABEL}=1, {PID_LABEL}={os.getpid()})"
        )
        workdir = broker.workdir
    assert len(ids) == 2
    assert not _engine_containers(ids), "close() must remove every container the broker ran"
    assert not workdir.exists(), f"close() must remove the rendered configuration in {workdir}"


def test_taken_port_is_named_in_the_error(docker_engine: None) -> None:
    """A fixed port is not retried: the error must say which one is taken."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        broker = DockerMosquitto("open", port=port)
        with pytest.raises(BrokerStartError) as caught, broker:
            pytest.fail(f"port {port} is in use, yet a broker started on it")
    message = str(caught.value)
    assert f"port {port} is taken" in message, message


def test_mtls_broker_in_a_container_reads_its_mounted_certificates(
    start_broker: Callable[..., DockerMosquitto], topic_root: str
) -> None:
    """Lesson 08 on docker: the certificates are mounted with config/ and the key is readable
    by the image's mosquitto user; identity-as-username works as on the local backend."""
    from mqtt_factory_lab.core.certificates import run_certificates
    from mqtt_factory_lab.core.connection import ConnectionSettings
    from mqtt_factory_lab.core.tls_probe import probe_tls

    broker = start_broker("mtls+persistent")
    certs = run_certificates()
    press = certs.client("press-01")
    settings = ConnectionSettings(
        broker.host, broker.port, tls=True, ca=str(certs.ca_file), cert=str(press.cert),
        key=str(press.key),
    )  # fmt: skip
    mark = broker.log_mark()
    client = RecordingClient(broker.host, broker.port, "any-id", connection=settings)
    client.connect()
    try:
        client.subscribe(f"{topic_root}/x", qos=1)
        client.publish(f"{topic_root}/x", b"over mutual TLS", qos=1)
        assert client.wait_for_message(f"{topic_root}/x").text == "over mutual TLS"
    finally:
        client.disconnect()
    broker.wait_for_log(r"as any-id \(.*u'press-01'", since=mark)
    refused = probe_tls(broker.host, broker.port, ca=certs.ca_file)
    assert refused.kind == "cert_required", refused.sentence


def test_a_bridged_pair_is_two_containers_that_reach_each_other(docker_engine: None) -> None:
    """Lesson 10's pair: the site container's bridge reaches the cloud container (on the pair's
    own network in bridge mode, on loopback in host mode), again after the cloud restarts, and
    close() leaves neither container nor network behind."""
    from mqtt_factory_lab.core.bridge import BRIDGE_TEMPLATE, BrokerPair
    from mqtt_factory_lab.fixtures.bridge import wait_until_bridged

    with BrokerPair("docker", BRIDGE_TEMPLATE.read_text()) as pair:
        wait_until_bridged(pair)
        pair.cloud.restart()
        wait_until_bridged(pair)  # the site's bridge found the new cloud container
        ids = [*pair.cloud.container_ids, *pair.site.container_ids]
        network = pair._network
        if pair.cloud.network == "bridge":
            assert network is not None and "address cloud:1883" in pair.bridge_config
    assert not _engine_containers(ids), "close() must remove both brokers' containers"
    if network is not None:
        import docker.errors
        from testcontainers.core.docker_client import DockerClient

        client = DockerClient().client
        try:
            with pytest.raises(docker.errors.NotFound):
                client.networks.get(network.name)
        finally:
            client.close()


def test_the_cleanup_sweep_removes_a_dead_runs_pair_network(docker_engine: None) -> None:
    """A run killed mid-experiment leaves its bridged pair's network behind: the sweep
    (``remove_containers(pid)``, also run at exit) removes networks with the run's label."""
    from testcontainers.core.docker_client import DockerClient

    from mqtt_factory_lab.brokers.docker import LABEL, remove_containers

    dead_run = 2**22 + os.getpid()  # a pid label no live lab process carries
    client = DockerClient().client
    try:
        network = client.networks.create(
            f"mqtt-lab-leftover-{os.getpid()}", labels={LABEL: "1", PID_LABEL: str(dead_run)}
        )
        remove_containers(dead_run)
        left = client.networks.list(filters={"label": f"{PID_LABEL}={dead_run}"})
        if left:
            network.remove()
        assert not left, "the sweep must remove the lab's networks of that run, not only containers"
    finally:
        client.close()
