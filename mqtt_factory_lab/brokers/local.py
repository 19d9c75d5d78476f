"""The local backend: the ``mosquitto`` executable as a child process.

The broker listens on a free 127.0.0.1 port and writes its log to a file that
tests can read. It runs as a :class:`~mqtt_factory_lab.core.process.ChildProcess`
(its own session, a parent-death signal, SIGTERM then SIGKILL), and the
process module's ``atexit`` registry closes any broker a crashed caller forgot.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

from mqtt_factory_lab.brokers import config as broker_config
from mqtt_factory_lab.brokers.base import (
    CONFIG,
    LOG,
    RESTART,
    Broker,
    BrokerStartError,
    BrokerUnavailable,
    format_log,
    free_port,
)
from mqtt_factory_lab.brokers.tls import broker_tls
from mqtt_factory_lab.core.certificates import KeyPair, LabCertificates
from mqtt_factory_lab.core.process import (
    ChildProcess,
    ProcessTimeout,
    track,
    untrack,
    wait_reaped,
    wait_until,
)

INSTALL_HINT = (
    "install it with your package manager (Debian/Ubuntu: `sudo apt-get install -y mosquitto`, "
    "macOS: `brew install mosquitto`), or use --broker-backend=docker, "
    "or point the lab at a running broker with --broker-url mqtt://HOST:PORT"
)


def find_mosquitto(executable: str | None = None) -> str | None:
    """Path of the mosquitto executable (also looked for in /usr/sbin), or None."""
    name = executable or os.environ.get("MQTT_LAB_MOSQUITTO", "mosquitto")
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/usr/local/sbin", "/opt/homebrew/sbin"):
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


class LocalMosquitto(Broker):
    """Mosquitto running as a child process of this Python process.

    :param variant: configuration variant from ``docker/variants``.
    :param port: port to listen on; ``None`` picks a free one.
    :param executable: the mosquitto binary (default: found on PATH or /usr/sbin).
    :param workdir: folder for config, data and log; default a fresh temp folder
        that :meth:`close` removes.
    :param extra_config: more configuration lines for this broker only.
    :param config_source: a team's own configuration folder instead of the lab's files
        (see :func:`~mqtt_factory_lab.brokers.config.render`).
    :param start_timeout: seconds to wait for the first accepted CONNECT.
    :param acl_file: the ACL to load instead of ``docker/acl``.
    :param password_file: a ``mosquitto_passwd`` file, installed as ``config/passwd``.
    :param certificates: the CA of a ``tls``/``mtls`` variant (default: the run's).
    :param server_certificate: the broker's certificate (default: the CA's for 127.0.0.1).

    Example::

        with LocalMosquitto("persistent") as broker:
            print(broker.url)
    """

    backend = "local"
    capabilities = frozenset({RESTART, CONFIG, LOG})

    def __init__(
        self,
        variant: str = "open",
        *,
        port: int | None = None,
        executable: str | None = None,
        workdir: Path | None = None,
        extra_config: str = "",
        config_source: Path | None = None,
        start_timeout: float = 10.0,
        acl_file: Path | None = None,
        password_file: Path | None = None,
        certificates: LabCertificates | None = None,
        server_certificate: KeyPair | None = None,
    ) -> None:
        super().__init__(variant)
        found = find_mosquitto(executable)
        if found is None:
            raise BrokerUnavailable(
                f"the local backend needs the `mosquitto` executable, which is not installed: "
                f"{INSTALL_HINT}"
            )
        fragments = broker_config.parse_variant(variant)
        self.tls = broker_tls(fragments, certificates, server_certificate)
        self.executable = found
        self._fixed_port = port
        self._owns_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="mqtt-lab-broker-"))
        self.workdir.chmod(0o700)  # its configuration, database and log: the lab's user's only
        self.extra_config = extra_config
        #: a team's own configuration folder used instead of the lab's (``--broker-config``)
        self.config_source = config_source
        self.acl_file = acl_file
        self.password_file = password_file
        self.start_timeout = start_timeout
        self.process: ChildProcess | None = None
        self.rendered: broker_config.RenderedConfig | None = None
        self.log_path = self.workdir / "mosquitto.log"
        self._log_chunks: list[str] = []

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        if self.is_running():
            return
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            port = self.port or self._fixed_port or free_port()
            try:
                self._start_on(port)
                return
            except BrokerStartError as error:
                # A free port can be taken by someone else between our check
                # and mosquitto's bind; try another one unless it was fixed.
                if "Address already in use" not in str(error) or attempt == attempts - 1:
                    raise
                self.port = 0

    def _start_on(self, port: int) -> None:
        extra = self.extra_config
        if os.geteuid() == 0:
            # Started as root, mosquitto would switch to the `mosquitto` user, which
            # may not reach a private temp folder (its ACL file, its database) and
            # loses the parent-death signal below. Root stays root for a test broker.
            extra = "user root\n" + extra
        self.rendered = broker_config.render(
            self.variant,
            self.workdir,
            port=port,
            extra=extra,
            acl_file=self.acl_file,
            password_file=self.password_file,
            source=self.config_source,
            tls=self.tls,
        )
        self.port = port
        self._archive_log()
        started = time.monotonic()
        process = self.process = ChildProcess(
            [self.executable, "-c", str(self.rendered.main_file)],
            name=f"mosquitto-{self.variant}",
            cwd=self.workdir,
            output_path=self.log_path,
        ).start()
        track(self)
        try:
            wait_until(
                lambda: self.ping(timeout=0.5),
                self.start_timeout,
                interval=0.01,
                stop_early=lambda: not process.is_running(),
            )
        except ProcessTimeout:
            if not process.is_running():
                self.process = None
                raise BrokerStartError(
                    self._start_failure(f"exited at start with status {process.returncode}")
                ) from None
            self._terminate()
            raise BrokerStartError(
                self._start_failure(f"did not accept an MQTT CONNECT within {self.start_timeout}s")
            ) from None
        self.ready_seconds = time.monotonic() - started

    def _start_failure(self, what: str) -> str:
        lines = self._current_log().splitlines()
        advice = "check the configuration files listed above"
        if any("Address already in use" in line for line in lines):
            advice = (
                f"port {self.port} is taken by another program: stop it "
                f"(`ss -ltnp 'sport = :{self.port}'` shows which), or let the harness pick a free port"
            )
        elif any("Error" in line for line in lines):
            advice = "the broker rejected its configuration; the error is in its log above"
        files = "\n".join(
            f"    {p}" for p in (self.rendered.files.values() if self.rendered else [])
        )
        return (
            f"mosquitto ({self.executable}, variant {self.variant!r}, port {self.port}) {what}.\n"
            f"  configuration files:\n{files}\n"
            f"  broker log:\n{format_log(lines)}\n"
            f"  what to do: {advice}"
        )

    def stop(self) -> None:
        self._terminate()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()

    def _terminate(self) -> None:
        if self.process is not None:
            wake_to_stop(self.process)
            self.process.stop()

    def close(self) -> None:
        self._terminate()
        self.process = None
        untrack(self)
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def is_running(self) -> bool:
        return self.process is not None and self.process.is_running()

    # -- what tests look at -------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def config_files(self) -> dict[str, Path]:
        return self.rendered.files if self.rendered else {}

    def _current_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _archive_log(self) -> None:
        """Keep the log of the previous run when the broker restarts."""
        text = self._current_log()
        if text:
            self._log_chunks.append(text)
        self.log_path.unlink(missing_ok=True)

    def log(self) -> str:
        return "".join(self._log_chunks) + self._current_log()


#: how many times :func:`wake_to_stop` stops and continues a broker that has not yet exited
WAKES = 10


def wake_to_stop(process: ChildProcess) -> None:
    """SIGTERM the broker, then stop and continue it until it has gone (a few ms).

    Mosquitto 2.0 blocks SIGTERM while it waits for its sockets (``epoll_wait`` with a 100 ms
    timeout, ``src/mux_epoll.c``), so an idle broker acts on it up to 100 ms late: 50 ms on
    average on every broker stop and restart. A process stopped and continued has its
    ``epoll_wait`` end with EINTR (signal(7): "interruption of system calls ... by stop
    signals"), and the pending SIGTERM is delivered as its mask is restored: the broker logs
    its usual "terminating" line and nothing else (a connection to wake it would log one).
    The rest (waiting, SIGKILL after a deadline) is :meth:`ChildProcess.stop`'s.
    """
    if not process.is_running():
        return
    process.signal(signal.SIGTERM)
    for _ in range(WAKES):
        if not process.is_running():
            return
        process.signal(signal.SIGSTOP)
        process.signal(signal.SIGCONT)
        wait_reaped(process.process, 0.005)  # type: ignore[arg-type]
