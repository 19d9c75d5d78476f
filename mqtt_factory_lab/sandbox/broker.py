"""The sandbox's broker: the ``docker/`` configuration, in a container or as ``mosquitto``.

The broker always runs the ``persistent`` variant (``restart-broker`` shows retained
messages and sessions coming back), plus ``acl`` with ``--acl``, and ``mtls`` with ``--mtls``
(the certificate folder's CA and server certificate in ``config/certs/``; with ``--acl``
the rules of ``docker/acl-machines``, which follow each certificate's identity). Its configuration and
database live in ``<state dir>/broker``. With an answering Docker engine it runs in the
lab's pinned image (a container named ``mqtt-lab-sandbox-<port>``, port published on
127.0.0.1); otherwise the local ``mosquitto`` executable runs as a detached program.
Unlike the test backends (:mod:`mqtt_factory_lab.brokers`), nothing here stops the broker
when this process exits: ``sandbox down`` does.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from mqtt_factory_lab.brokers import config as broker_config
from mqtt_factory_lab.brokers.base import mqtt_ping
from mqtt_factory_lab.brokers.local import INSTALL_HINT, find_mosquitto
from mqtt_factory_lab.brokers.tls import install_files, tls_ping
from mqtt_factory_lab.core.certificates import KeyPair
from mqtt_factory_lab.core.paths import DOCKER_DIR
from mqtt_factory_lab.core.process import ProcessTimeout, wait_until
from mqtt_factory_lab.sandbox.processes import StartError, alive, log_tail, spawn, terminate
from mqtt_factory_lab.sandbox.state import Record, StateDir

NAME = "broker"
HOST = "127.0.0.1"
START_TIMEOUT = 10.0


def variant(acl: bool, mtls: bool = False) -> str:
    return f"{'mtls+' if mtls else ''}{'acl+' if acl else ''}persistent"


def _render(state: StateDir, acl: bool, mtls: str | None, **where: Any) -> Any:
    """The broker's folder; under ``--mtls`` with the certificate folder's CA and server key."""
    rendered = broker_config.render(
        variant(acl, bool(mtls)),
        state.broker_dir,
        acl_file=DOCKER_DIR / "acl-machines" if acl and mtls else None,
        **where,
    )
    if mtls:
        folder = Path(mtls)
        server = KeyPair(
            "the broker's certificate",
            folder / "server.crt",
            folder / "server.key",
            folder / "ca.crt",
        )
        install_files(
            folder / "ca.crt",
            server,
            rendered.config_dir,
            container=not where.get("local_paths", True),
        )
    return rendered


def _ping(state: StateDir, port: int, timeout: float) -> bool:
    """Whether the broker answers a CONNECT: over TLS, as the observer, under ``--mtls``."""
    mtls = state.settings().get("mtls")
    if not mtls:
        return mqtt_ping(HOST, port, timeout=timeout)
    folder = Path(mtls)
    return tls_ping(HOST, port, folder / "observer.crt", folder / "observer.key", timeout)


def choose_backend(requested: str) -> tuple[str, str]:
    """``(backend, why)``: docker when asked or when an engine answers (auto), else local."""
    if requested == "local":
        return "local", "asked for"
    from mqtt_factory_lab.brokers.docker import docker_available

    answer = docker_available(timeout=2)
    if answer is True:
        return "docker", "a Docker engine answers"
    if requested == "docker":
        raise StartError(f"--broker-backend docker: {answer}")
    if find_mosquitto() is None:
        raise StartError(f"no Docker engine ({answer}) and no local mosquitto: {INSTALL_HINT}")
    return "local", "no Docker engine answers"


def start(
    state: StateDir,
    backend: str,
    port: int,
    acl: bool,
    env: dict[str, str],
    mtls: str | None = None,
) -> Record:
    """Start the broker and return once it answers an MQTT CONNECT (``mtls``: the
    certificate folder of ``--mtls``)."""
    if backend == "docker":
        record = _start_container(state, port, acl, mtls)
    else:
        record = _start_local(state, port, acl, env, mtls)
    wait_ready(state, record, port)
    return record


def wait_ready(state: StateDir, record: Record, port: int, timeout: float = START_TIMEOUT) -> None:
    try:
        wait_until(
            lambda: _ping(state, port, 0.5),
            timeout,
            interval=0.02,
            stop_early=lambda: not running(record),
        )
    except ProcessTimeout:
        raise StartError(
            f"the broker on port {port} did not accept an MQTT CONNECT within {timeout:g} s.\n"
            f"  its log ({record.log}):\n{log_tail(write_log(state, record))}"
        ) from None


def _start_local(
    state: StateDir, port: int, acl: bool, env: dict[str, str], mtls: str | None = None
) -> Record:
    executable = find_mosquitto()
    if executable is None:
        raise StartError(f"the sandbox needs the `mosquitto` executable: {INSTALL_HINT}")
    # As root, mosquitto would switch to the `mosquitto` user, who may not reach the
    # state folder; the sandbox's broker runs as whoever runs the sandbox.
    extra = "user root\n" if os.geteuid() == 0 else ""
    rendered = _render(state, acl, mtls, port=port, extra=extra)
    return spawn(state, NAME, [executable, "-c", str(rendered.main_file)], env)


def _docker() -> Any:
    import docker
    from mqtt_factory_lab.brokers.docker import _docker_environment

    return docker.from_env(environment=_docker_environment())


def _start_container(state: StateDir, port: int, acl: bool, mtls: str | None = None) -> Record:
    from mqtt_factory_lab.brokers.docker import (
        COMMAND,
        DEFAULT_IMAGE,
        IMAGE_ENV,
        LABEL,
        NETWORK_ENV,
    )

    # ``MQTT_LAB_DOCKER_NETWORK=host`` (CI, whose engine has no bridge): the container
    # shares the host's network and mosquitto itself listens on 127.0.0.1:<port>.
    host_network = os.environ.get(NETWORK_ENV) == "host"
    rendered = _render(
        state,
        acl,
        mtls,
        port=port if host_network else 1883,
        bind_address=HOST if host_network else None,
        local_paths=False,
    )
    client = _docker()
    image = os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE
    name = f"mqtt-lab-sandbox-{port}"
    network = {"network_mode": "host"} if host_network else {"ports": {"1883/tcp": (HOST, port)}}
    container = client.containers.run(  # pulls the image when it is missing
        image,
        COMMAND,
        detach=True,
        name=name,
        **network,
        volumes={
            str(rendered.config_dir): {"bind": "/mosquitto/config", "mode": "ro"},
            str(rendered.data_dir): {"bind": "/mosquitto/data", "mode": "rw"},
        },
        labels={LABEL: "1", f"{LABEL}.sandbox": str(state.path)},
    )
    record = Record(NAME, 0, time.time(), [], str(state.log_file(NAME)), container=container.id)
    state.write(record)
    return record


def _container(record: Record) -> Any:
    import docker.errors

    try:
        return _docker().containers.get(record.container)
    except docker.errors.NotFound:
        return None


def running(record: Record) -> bool:
    if record.container:
        container = _container(record)
        return container is not None and container.status in ("running", "created", "paused")
    return alive(record)


def write_log(state: StateDir, record: Record) -> str:
    """The broker's log file (a container's log is copied into it first)."""
    if record.container:
        container = _container(record)
        if container is not None:
            state.log_file(NAME).write_bytes(container.logs())
    return record.log


def stop(record: Record, timeout: float = 5.0) -> None:
    """SIGTERM (mosquitto writes its database), then SIGKILL; a container is removed."""
    if record.container:
        container = _container(record)
        if container is not None:
            container.stop(timeout=int(timeout))
            container.remove(force=True)
        return
    process = record.process()
    if process is not None:
        terminate([process], timeout)


def pause(record: Record) -> None:
    if record.container:
        _container(record).pause()
    else:
        os.kill(record.pid, signal.SIGSTOP)


def resume(record: Record) -> None:
    if record.container:
        _container(record).unpause()
    else:
        os.kill(record.pid, signal.SIGCONT)


def restart(state: StateDir, record: Record, port: int, env: dict[str, str]) -> Record:
    """Stop the broker cleanly and start it again on the same files and port."""
    if record.container:
        _container(record).restart(timeout=5)
        wait_ready(state, record, port)
        return record
    stop(record)
    fresh = spawn(state, NAME, record.argv, env)
    wait_ready(state, fresh, port)
    return fresh
