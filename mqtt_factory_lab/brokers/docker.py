"""The docker backend: Mosquitto in a container, started through testcontainers.

The container runs the very files the local backend runs: :func:`mqtt_factory_lab.brokers.config.render`
builds ``<tmp>/config`` and ``<tmp>/data`` with container paths kept, and they
are mounted at ``/mosquitto/config`` (read-only) and ``/mosquitto/data``. Two
network modes exist:

``bridge`` (default)
    Mosquitto listens on 1883 on every interface of the container; Docker maps
    it to a host port chosen once, so a restart keeps the address.
``host``
    The container shares the host's network and Mosquitto listens on a free
    ``127.0.0.1`` port. CI uses this (its dockerd runs with ``--bridge=none``,
    see ``.ci/with-docker-engine.sh``).

Environment: ``MQTT_LAB_DOCKER_IMAGE`` (default :data:`DEFAULT_IMAGE`) and
``MQTT_LAB_DOCKER_NETWORK`` (``bridge`` or ``host``). ``DOCKER_HOST`` and the
testcontainers settings (``TESTCONTAINERS_RYUK_DISABLED``, ``TC_HOST``...) are
honoured as testcontainers documents them.

Every container carries the labels ``mqtt-factory-lab=1`` and
``mqtt-factory-lab.pid=<pid>``; an ``atexit`` hook removes the ones this
process left (Ryuk does the same after a hard crash when it is enabled).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mqtt_factory_lab.brokers import config as broker_config
from mqtt_factory_lab.brokers.base import (
    CONFIG,
    LOG,
    RESTART,
    Broker,
    BrokerError,
    BrokerStartError,
    BrokerUnavailable,
    format_log,
    free_port,
)
from mqtt_factory_lab.brokers.tls import broker_tls
from mqtt_factory_lab.core.certificates import KeyPair, LabCertificates
from mqtt_factory_lab.core.process import (
    ProcessTimeout,
    close_forgotten,
    track,
    untrack,
    wait_until,
)

if TYPE_CHECKING:
    from testcontainers.core.container import DockerContainer

DEFAULT_IMAGE = "eclipse-mosquitto:2.0.20"
IMAGE_ENV = "MQTT_LAB_DOCKER_IMAGE"
NETWORK_ENV = "MQTT_LAB_DOCKER_NETWORK"
NETWORKS = ("bridge", "host")
LABEL = "mqtt-factory-lab"
PID_LABEL = "mqtt-factory-lab.pid"
CONTAINER_PORT = 1883
COMMAND = "mosquitto -c /mosquitto/config/mosquitto.conf"
READY_LINE = re.compile(r"mosquitto version \S+ running")

INSTALL_HINT = (
    "install the Python packages with `pip install 'testcontainers>=4.8,<5'` "
    "(it brings `docker`), or use --broker-backend=local"
)
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}
_STARTED_ANY = False


def _docker_environment() -> dict[str, str]:
    """``os.environ``, plus ``DOCKER_HOST`` from the current docker context when unset.

    testcontainers reads the context (``docker context use ...``) but the docker
    SDK alone does not; both must talk to the same engine.
    """
    environment = dict(os.environ)
    if not environment.get("DOCKER_HOST") and importlib.util.find_spec("testcontainers"):
        with contextlib.suppress(Exception):
            from testcontainers.core.docker_client import get_docker_host

            host = get_docker_host()
            if host:
                environment["DOCKER_HOST"] = host
    return environment


def docker_available(timeout: float = 3) -> bool | str:
    """Whether a Docker engine answers a ping within ``timeout`` seconds.

    Used to choose the backend automatically, so it never raises and never waits
    long: it returns ``True``, or a sentence saying why not (compare with
    ``is True``, a reason is a non-empty string).
    """
    if not all(importlib.util.find_spec(name) for name in ("docker", "testcontainers")):
        return f"the docker backend needs `testcontainers` and `docker`: {INSTALL_HINT}"
    if not _may_have_an_engine():
        return f"nothing answered at the default socket: {DEFAULT_SOCKET} does not exist"
    import docker.errors

    environment = _docker_environment()
    where = environment.get("DOCKER_HOST") or "the default socket (/var/run/docker.sock)"
    try:
        client = docker.from_env(timeout=timeout, environment=environment)
    except docker.errors.DockerException as error:
        return f"nothing answered at {where}: {_first_line(error)}"
    try:
        client.ping()
    except Exception as error:  # requests' and docker's errors alike: the engine did not answer
        return f"the Docker engine at {where} did not answer a ping: {_first_line(error)}"
    finally:
        client.close()
    return True


DEFAULT_SOCKET = Path("/var/run/docker.sock")


def _may_have_an_engine() -> bool:
    """False when no engine can be configured: no DOCKER_HOST, no docker context, no default
    socket. Saves importing the docker SDK and testcontainers (~0.6 s) on every lesson run of
    a machine without Docker."""
    if os.environ.get("DOCKER_HOST") or os.environ.get("TESTCONTAINERS_DOCKER_SOCKET_OVERRIDE"):
        return True
    config = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
    return DEFAULT_SOCKET.exists() or (config / "contexts").is_dir()


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]


def _import_testcontainers() -> Any:
    try:
        from testcontainers.core import container
    except ImportError as error:
        raise BrokerUnavailable(
            f"the docker backend needs testcontainers, which is not installed ({error}): "
            f"{INSTALL_HINT}"
        ) from error
    return container


class DockerMosquitto(Broker):
    """Mosquitto in a Docker container, with the harness's configuration files.

    :param variant: configuration variant from ``docker/variants`` (``"acl+persistent"``...).
    :param image: the image; default ``$MQTT_LAB_DOCKER_IMAGE`` or :data:`DEFAULT_IMAGE`.
    :param network: ``"bridge"`` or ``"host"``; default ``$MQTT_LAB_DOCKER_NETWORK`` or bridge.
    :param port: host port clients connect to; ``None`` picks a free one, kept across restarts.
    :param workdir: folder for the rendered config and data; default a fresh temp
        folder that :meth:`close` removes.
    :param extra_config: more configuration lines for this broker only.
    :param config_source: a team's own configuration folder instead of the lab's files
        (see :func:`~mqtt_factory_lab.brokers.config.render`).
    :param start_timeout: seconds to wait for the ready line and an accepted CONNECT.
    :param acl_file: the ACL to load instead of ``docker/acl``.
    :param password_file: a ``mosquitto_passwd`` file, installed as ``config/passwd``.
    :param certificates: the CA of a ``tls``/``mtls`` variant (default: the run's).
    :param server_certificate: the broker's certificate (default: the CA's for 127.0.0.1).

    Example::

        with DockerMosquitto("persistent") as broker:
            print(broker.url, broker.ready_seconds)
    """

    backend = "docker"
    capabilities = frozenset({RESTART, CONFIG, LOG})

    def __init__(
        self,
        variant: str = "open",
        *,
        image: str | None = None,
        network: str | None = None,
        port: int | None = None,
        workdir: Path | None = None,
        extra_config: str = "",
        config_source: Path | None = None,
        start_timeout: float = 30.0,
        acl_file: Path | None = None,
        password_file: Path | None = None,
        certificates: LabCertificates | None = None,
        server_certificate: KeyPair | None = None,
    ) -> None:
        super().__init__(variant)
        fragments = broker_config.parse_variant(variant)
        self.tls = broker_tls(fragments, certificates, server_certificate)
        self.image = image or os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE
        self.network = (network or os.environ.get(NETWORK_ENV) or "bridge").strip().lower()
        if self.network not in NETWORKS:
            raise BrokerError(
                f"unknown Docker network mode {self.network!r} (from the argument or "
                f"{NETWORK_ENV}): choose one of {', '.join(NETWORKS)}"
            )
        self._fixed_port = port
        self._owns_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="mqtt-lab-container-"))
        self.workdir.chmod(0o755)
        self.extra_config = extra_config
        #: a team's own configuration folder used instead of the lab's (``--broker-config``)
        self.config_source = config_source
        self.acl_file = acl_file
        self.password_file = password_file
        self.start_timeout = start_timeout
        self.rendered: broker_config.RenderedConfig | None = None
        #: ids of every container this broker ran, oldest first (for tests and cleanup).
        self.container_ids: list[str] = []
        self._container: DockerContainer | None = None
        self._log_chunks: list[str] = []
        self._closed = False

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        if self.is_running():
            return
        if self._closed:
            raise BrokerError(f"{self!r} was closed; create a new broker")
        self._discard_container(graceful=False)
        tc = _import_testcontainers()
        # A restart keeps its port (clients reconnect to it), and so does a fixed
        # one; a first start on a free port retries if another program took it.
        attempts = 1 if self._fixed_port or self.port else 3
        for attempt in range(attempts):
            if not self.port:
                self.port = self._fixed_port or free_port()
            try:
                self._start_once(tc)
                return
            except BrokerStartError as error:
                if not _port_taken(str(error)) or attempt == attempts - 1:
                    raise
                self.port = 0

    def _start_once(self, tc: Any) -> None:
        if self.network == "host":
            listener_port, bind_address = self.port, "127.0.0.1"
        else:
            listener_port, bind_address = CONTAINER_PORT, None
        self.rendered = broker_config.render(
            self.variant,
            self.workdir,
            port=listener_port,
            bind_address=bind_address,
            local_paths=False,
            extra=self.extra_config,
            source=self.config_source,
            acl_file=self.acl_file,
            password_file=self.password_file,
            tls=self.tls,
        )
        container = self._build(tc.DockerContainer)
        started = time.monotonic()
        self._run(container)
        self._wait_until_ready(container, started + self.start_timeout)
        self.ready_seconds = time.monotonic() - started

    def _build(self, docker_container: type[DockerContainer]) -> DockerContainer:
        assert self.rendered is not None
        safe_variant = re.sub(r"[^A-Za-z0-9_.-]", "-", self.variant)
        container = (
            docker_container(self.image, command=COMMAND)
            .with_name(f"mqtt-lab-{safe_variant}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            .with_volume_mapping(self.rendered.config_dir, "/mosquitto/config", "ro")
            .with_volume_mapping(self.rendered.data_dir, "/mosquitto/data", "rw")
        )
        labels = {LABEL: "1", PID_LABEL: str(os.getpid()), f"{LABEL}.variant": self.variant}
        if self.network == "host":
            container.with_kwargs(labels=labels, network_mode="host")
        else:
            container.with_bind_ports(CONTAINER_PORT, self.port).with_kwargs(labels=labels)
            if self._engine_is_local(container):
                # Publish on loopback only: the lab's brokers allow anonymous
                # clients and have no business on the LAN.
                container.ports[f"{CONTAINER_PORT}"] = ("127.0.0.1", self.port)  # type: ignore[assignment]
        return container

    @staticmethod
    def _engine_is_local(container: DockerContainer) -> bool:
        with contextlib.suppress(Exception):
            return container.get_docker_client().host() in _LOCAL_HOSTS
        return False

    def _ensure_image(self, container: DockerContainer) -> None:
        """Have the image locally before starting: a pull that fails is named as what it is."""
        import docker.errors

        images = container.get_docker_client().client.images
        try:
            images.get(self.image)
            return
        except docker.errors.ImageNotFound:
            pass
        try:
            images.pull(self.image)
        except docker.errors.DockerException as error:  # ImageNotFound, APIError (no registry)
            self._forget(container)
            raise BrokerStartError(self._image_missing(error)) from error

    def _run(self, container: DockerContainer) -> None:
        """Create and start the container, turning Docker's errors into advice."""
        import docker.errors

        self._ensure_image(container)
        try:
            container.start()
        except docker.errors.ImageNotFound as error:
            self._forget(container)
            raise BrokerStartError(self._image_missing(error)) from error
        except docker.errors.APIError as error:
            self._forget(container)
            text = str(error)
            if "ryuk" in text.lower():
                raise BrokerStartError(
                    f"testcontainers could not start its Ryuk cleanup container before "
                    f"{self.image}: {_first_line(error)}.{_ryuk_hint(error)}"
                ) from error
            if "address already in use" in text.lower() or "port is already allocated" in text:
                raise BrokerStartError(
                    f"Docker could not publish port {self.port} for {self.image}: "
                    f"{_first_line(error)}.\n  what to do: port {self.port} is taken on the "
                    "host by another program; stop it or let the harness pick a free port."
                ) from error
            raise BrokerStartError(
                f"Docker refused to start {self.image} (variant {self.variant!r}): "
                f"{_first_line(error)}"
            ) from error
        except docker.errors.DockerException as error:
            self._forget(container)
            raise BrokerStartError(
                f"the Docker engine failed while starting {self.image}: {_first_line(error)}. "
                "Is it still running? (`docker info`)" + _ryuk_hint(error)
            ) from error
        global _STARTED_ANY
        _STARTED_ANY = True
        self._container = container
        self.container_ids.append(container.get_container_id())
        track(self)

    def _wait_until_ready(self, container: DockerContainer, deadline: float) -> None:
        """Wait for the ready line, then for a real CONNECT; fail fast if the container exits."""
        from testcontainers.core.wait_strategies import LogMessageWaitStrategy

        strategy = (
            LogMessageWaitStrategy(READY_LINE)
            .with_startup_timeout(max(1, int(deadline - time.monotonic())))
            .with_poll_interval(0.05)
        )
        try:
            strategy.wait_until_ready(container)
        except RuntimeError as error:  # the container exited before the ready line
            raise BrokerStartError(self._start_failure("exited at start")) from error
        except TimeoutError as error:
            raise BrokerStartError(
                self._start_failure(
                    f"never logged 'mosquitto version ... running' within {self.start_timeout}s",
                    error,
                )
            ) from error
        self.host = self._client_host(container)
        try:
            wait_until(
                lambda: self.ping(timeout=0.5),
                max(0.0, deadline - time.monotonic()),
                stop_early=lambda: not self.is_running(),
            )
            return
        except ProcessTimeout:
            if not self.is_running():
                raise BrokerStartError(
                    self._start_failure("exited after logging its ready line")
                ) from None
        raise BrokerStartError(
            self._start_failure(
                f"logged its ready line but accepted no MQTT CONNECT at {self.host}:{self.port} "
                f"within {self.start_timeout}s"
            )
        )

    def _client_host(self, container: DockerContainer) -> str:
        if self.network == "host":
            return "127.0.0.1"
        host = container.get_container_host_ip()
        # "localhost" may resolve to ::1 first, where nothing is published.
        return "127.0.0.1" if host == "localhost" else host

    def _start_failure(self, what: str, cause: BaseException | None = None) -> str:
        lines = self._container_log().splitlines()
        code = self._exit_code()
        advice = "check the configuration files listed above"
        if any("Address already in use" in line for line in lines):
            advice = (
                f"port {self.port} is taken on the host: let the harness pick a free port "
                "or stop the program using it"
            )
        elif any("Error" in line for line in lines):
            advice = "the broker rejected its configuration; the error is in its log above"
        elif not lines:
            advice = (
                f"the container printed nothing: check that {self.image} contains "
                f"`mosquitto` on its PATH (try `docker run --rm {self.image} {COMMAND}`)"
            )
        paths = self.rendered.files.values() if self.rendered else []
        files = "\n".join(f"    {p}" for p in paths)
        status = f" (exit status {code})" if code is not None else ""
        detail = f"\n  testcontainers said: {_first_line(cause)}" if cause else ""
        self._discard_container(graceful=False)
        return (
            f"mosquitto in a container (image {self.image}, variant {self.variant!r}, "
            f"{self.network} network, port {self.port}) {what}{status}.\n"
            f"  configuration files (mounted at /mosquitto/config):\n{files}\n"
            f"  broker log:\n{format_log(lines)}{detail}\n"
            f"  what to do: {advice}"
        )

    def _image_missing(self, error: BaseException) -> str:
        return (
            f"the Docker image {self.image} is not on this machine and could not be pulled: "
            f"{_first_line(error)}.\n"
            f"  what to do: on a machine with internet run `docker pull {self.image}` "
            f"(to carry it over: `docker save {self.image} -o mosquitto.tar`, then "
            "`docker load -i mosquitto.tar`); or set "
            f"{IMAGE_ENV} to a Mosquitto image you have (`docker images`; on a CI machine as "
            "root, `bash .ci/with-docker-engine.sh COMMAND` builds one offline from the "
            "installed mosquitto); or use --broker-backend=local."
        )

    def stop(self) -> None:
        """``docker stop`` (SIGTERM, so Mosquitto saves persistence), then remove the container."""
        self._discard_container(graceful=True)

    def kill(self) -> None:
        """``docker kill``: SIGKILL, nothing saved; the dead container stays until start/close."""
        wrapped = self._wrapped()
        if wrapped is None:
            return
        import docker.errors

        with contextlib.suppress(docker.errors.APIError):  # it may have exited already
            wrapped.kill()
        with contextlib.suppress(docker.errors.DockerException, OSError):
            wrapped.wait(timeout=10)

    def close(self) -> None:
        """Remove the container and, when the harness made it, the temp folder. Safe twice."""
        self._closed = True
        try:
            # Kept files (a caller's workdir) get a graceful stop so persistence is saved.
            self._discard_container(graceful=not self._owns_workdir)
        finally:
            untrack(self)
            if self._owns_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def _discard_container(self, *, graceful: bool) -> None:
        """Keep the container's log, stop it (gracefully or not) and remove it."""
        container = self._container
        if container is None:
            return
        self._container = None
        import docker.errors

        wrapped = _wrapped(container)
        if wrapped is not None:
            with contextlib.suppress(docker.errors.DockerException):
                if graceful:
                    wrapped.stop(timeout=10)
            with contextlib.suppress(docker.errors.DockerException):
                self._log_chunks.append(_decode(wrapped.logs()))
        self._forget(container)

    @staticmethod
    def _forget(container: DockerContainer) -> None:
        """Remove the container (if created) and close its Docker client."""
        import docker.errors

        with contextlib.suppress(docker.errors.NotFound):
            if (wrapped := _wrapped(container)) is not None:
                wrapped.remove(force=True, v=True)
        with contextlib.suppress(Exception):
            container.get_docker_client().client.close()

    def is_running(self) -> bool:
        wrapped = self._wrapped()
        if wrapped is None:
            return False
        import docker.errors

        try:
            wrapped.reload()
        except (docker.errors.DockerException, OSError):  # removed, or the engine is gone
            return False
        return wrapped.status == "running"

    # -- what tests look at -------------------------------------------------
    def _wrapped(self) -> Any:
        return _wrapped(self._container) if self._container is not None else None

    @property
    def container_id(self) -> str | None:
        """The id of the current container, or ``None`` when stopped."""
        wrapped = self._wrapped()
        return wrapped.id if wrapped is not None else None

    def _exit_code(self) -> int | None:
        wrapped = self._wrapped()
        if wrapped is None:
            return None
        with contextlib.suppress(Exception):
            wrapped.reload()
            if wrapped.status != "running":
                return int(wrapped.attrs["State"]["ExitCode"])
        return None

    @property
    def config_files(self) -> dict[str, Path]:
        return self.rendered.files if self.rendered else {}

    def _container_log(self) -> str:
        wrapped = self._wrapped()
        if wrapped is None:
            return ""
        import docker.errors

        try:
            return _decode(wrapped.logs())
        except docker.errors.DockerException:
            return ""

    def log(self) -> str:
        """Every line the broker logged, earlier containers (before a restart) first."""
        return "".join(self._log_chunks) + self._container_log()

    def health(self) -> str:
        line = super().health()
        return f"{line} (container image {self.image}, {self.network} network)"


def _wrapped(container: DockerContainer) -> Any:
    """The docker SDK's container behind a testcontainers one, or None before it was created."""
    from testcontainers.core.exceptions import ContainerStartException

    try:
        return container.get_wrapped_container()
    except ContainerStartException:
        return None


def _decode(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace")
    return text if not text or text.endswith("\n") else text + "\n"


def _port_taken(message: str) -> bool:
    return "Address already in use" in message or "already allocated" in message


def _ryuk_hint(error: BaseException) -> str:
    if "ryuk" in str(error).lower():
        return (
            " Without a registry its image cannot be pulled: set TESTCONTAINERS_RYUK_DISABLED=true"
            " (the lab removes its own containers at exit)."
        )
    return ""


def remove_containers(pid: int | None = None) -> list[str]:
    """Remove the lab's containers (of process ``pid``, or all) from the engine; return their ids.

    The docker networks of the lab's bridged pairs (same labels) go too, once their containers
    are gone: a run killed mid-experiment leaves neither behind.

    For cleanup after a crash: ``python -c "from mqtt_factory_lab.brokers.docker import
    remove_containers; print(remove_containers())"``.
    """
    if docker_available() is not True:
        return []
    import docker.errors

    client = docker.from_env(environment=_docker_environment())
    label = f"{PID_LABEL}={pid}" if pid is not None else f"{LABEL}=1"
    removed = []
    try:
        for container in client.containers.list(all=True, filters={"label": label}):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True, v=True)
                removed.append(container.id)
        for network in client.networks.list(filters={"label": label}):
            with contextlib.suppress(docker.errors.APIError):
                network.remove()
    finally:
        client.close()
    return removed


@atexit.register
def _remove_forgotten_containers() -> None:
    """Close what a caller forgot, then sweep this process's label, just in case."""
    close_forgotten()
    if _STARTED_ANY:
        with contextlib.suppress(Exception):
            remove_containers(os.getpid())
