"""Start a whole factory as child processes, and stop every one of them.

::

    $ python -m sim.run_all --anomaly --controller-session persistent
    $ python -m sim.run_all --mtls certs/ --port 8883   # mutual TLS, one certificate each
    run_all: started observer as pid 4242
    ...
    ready run_all

The programs are the lab's own: the observer first (so it sees everything),
then the controller and the dashboard (``sim.dashboard``, whose address
run_all prints: ``run_all: dashboard at http://127.0.0.1:8080/``;
``--no-dashboard`` leaves it out), then one device of each kind (``press``,
``conveyor``, ``robot_arm``, ``oven``, ``packer``, ``environment``; the
device id and the client id are the kind's name, which is what
``docker/acl`` expects). Each is
waited for until it prints its ``ready <id>`` line; one that exits first or
stays silent past ``--ready-timeout`` stops the start with an error naming it
and quoting its output.

Everything the children print is forwarded, prefixed with their name
(``press      | ...``). Ctrl-C, SIGTERM or the end of ``--duration`` stops
them in order: devices first (the observer and the dashboard still see them
go offline), then the controller, then the observer and the dashboard; each
gets SIGTERM, some seconds to finish, then SIGKILL. A child that crashes meanwhile is reported and the rest of the
factory keeps running, as a real plant would. SIGHUP (a closed terminal)
stops it the same way. SIGKILL of run_all itself cannot be caught; on Linux
the children are started with a parent-death signal (``setpriv --pdeathsig``)
and stop anyway. Elsewhere they would keep running: find them with
``pgrep -af 'sim.device|sim.controller|sim.observer|sim.dashboard'`` and stop them by PID.

Exit status: 0 after a normal stop, 1 when the factory could not start (or
every program had exited by itself).

:class:`Component` is one program as a child process: its lines forwarded as
they arrive and kept for error messages, a wait for its ready line, and a stop
that always ends it. (The tests start programs with the harness's
``RoleProcess`` instead: the reference solution must not depend on the harness.)
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TextIO

from sim.connection import BrokerSettings, add_arguments
from sim.machines import DEVICE_KINDS
from sim.runtime import (
    READY,
    StopSignals,
    broker_settings,
    print_ready,
    setup_logging,
    write_line,
)

log = logging.getLogger("run_all")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
_LIVE: set[Component] = set()

#: ``echo(component_name, stream_name, line)``: where a child's lines go as they arrive
Echo = Callable[[str, str, str], None]


class ComponentError(RuntimeError):
    """A program could not start, exited, or never became ready.

    The message names the program and quotes its last output.
    """


class Component:
    """One program of the factory running as a child process.

    :param name: what to call it in messages (``press``, ``controller``).
    :param module: the module to run with ``python -m`` (``sim.device``).
    :param args: its command-line arguments.
    :param env: its environment (default: ours). The project root is added to
        ``PYTHONPATH`` so ``sim`` is importable from any working directory.
    :param echo: called with every line it prints, as it arrives.
    :param python: the interpreter (default: the one running this code).

    Example::

        observer = Component("observer", "sim.observer", ["--json"], echo=echo).start()
        try:
            observer.wait_ready()
        finally:
            observer.stop()
    """

    def __init__(
        self,
        name: str,
        module: str,
        args: Sequence[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        echo: Echo | None = None,
        python: str = sys.executable,
    ) -> None:
        self.name = name
        self.command = [python, "-m", module, *args]
        env = dict(os.environ if env is None else env)
        paths = [str(PROJECT_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.env = env
        self.echo = echo
        self.process: subprocess.Popen[str] | None = None
        self.ready_id: str | None = None
        self._lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._cond = threading.Condition()
        self._readers: list[threading.Thread] = []

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> Component:
        """Start the program (in a session of its own, so Ctrl-C reaches only us).

        On Linux the child is also started through ``setpriv --pdeathsig TERM``
        (util-linux), so that it gets SIGTERM even if run_all itself is killed
        with SIGKILL and cannot stop it.

        :raises ComponentError: when it cannot be run at all.
        """
        setpriv = shutil.which("setpriv")
        prefix = [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []
        try:
            self.process = subprocess.Popen(
                [*prefix, *self.command],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self.env,
                text=True,
                encoding="utf-8",
                errors="replace",
                bufsize=1,
                start_new_session=True,
            )
        except OSError as error:
            raise ComponentError(
                f"{self.name} could not be started: {error} (command: {shlex.join(self.command)})"
            ) from error
        _LIVE.add(self)
        streams = (("stdout", self.process.stdout), ("stderr", self.process.stderr))
        for stream_name, stream in streams:
            reader = threading.Thread(
                target=self._read,
                args=(stream_name, stream),
                name=f"{self.name}-{stream_name}",
                daemon=True,
            )
            reader.start()
            self._readers.append(reader)
        return self

    def _read(self, stream_name: str, stream: TextIO) -> None:
        for raw in stream:
            line = raw.rstrip("\n")
            with self._cond:
                self._lines[stream_name].append(line)
                if stream_name == "stdout" and self.ready_id is None:
                    match = READY.match(line)
                    if match:
                        self.ready_id = match.group(1)
                self._cond.notify_all()
            if self.echo is not None:
                try:
                    self.echo(self.name, stream_name, line)
                except (OSError, ValueError):
                    # Our own output is gone (a closed pipe): keep draining the
                    # child's, or it would block on a full pipe.
                    self.echo = None
        stream.close()
        with self._cond:
            self._cond.notify_all()

    def stop(self, timeout: float = 5.0) -> int | None:
        """Ask the program to stop (SIGTERM), wait ``timeout`` s, then SIGKILL it.

        :returns: its exit status (negative: the signal that ended it), or None
            when it was never started.
        """
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s ignored SIGTERM for %.1fs: killing it", self.name, timeout)
                process.kill()
                process.wait()
        self._join_readers()
        _LIVE.discard(self)
        return process.returncode

    def signal(self, signum: int) -> None:
        """Send a signal (if it is still running)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def _join_readers(self) -> None:
        # After the process is gone the pipes reach EOF quickly, unless a
        # grandchild still holds them; never hang on that.
        for reader in self._readers:
            reader.join(timeout=2.0)

    # -- state -------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def returncode(self) -> int | None:
        return self.process.poll() if self.process else None

    def output(self, last: int = 30) -> str:
        """The last lines of both streams, indented, for error messages."""
        with self._cond:
            out = [f"    {line}" for line in self._lines["stdout"][-last:]]
            err = [f"    {line}" for line in self._lines["stderr"][-last:]]
        return (
            "  stdout:\n" + ("\n".join(out) or "    (nothing)") + "\n"
            "  stderr:\n" + ("\n".join(err) or "    (nothing)")
        )

    def describe(self, what: str) -> str:
        code = self.returncode
        status = "it is still running" if code is None else f"it exited with status {code}"
        return (
            f"{self.name} {what}; {status}.\n  command: {shlex.join(self.command)}\n{self.output()}"
        )

    # -- waiting -------------------------------------------------------------------
    def _finished_reading(self) -> bool:
        return (
            self.process is not None
            and self.process.poll() is not None
            and not any(reader.is_alive() for reader in self._readers)
        )

    def wait_ready(self, timeout: float = 15.0, abort: Callable[[], bool] | None = None) -> str:
        """Wait for the ``ready <id>`` line on stdout; return the id.

        :param abort: stop waiting (ComponentError) as soon as this returns True.
        :raises ComponentError: if it exits first, or the deadline passes.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.ready_id is None:
                if self._finished_reading():
                    raise ComponentError(self.describe("exited before printing its 'ready' line"))
                if abort is not None and abort():
                    raise ComponentError(f"start of {self.name} interrupted")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ComponentError(
                        self.describe(f"did not print its 'ready' line within {timeout}s")
                    )
                self._cond.wait(min(remaining, 0.1))
            return self.ready_id

    def wait_for_line(self, pattern: str, timeout: float = 5.0) -> re.Match[str] | None:
        """The first stdout line matching ``pattern``, waiting up to ``timeout`` s; None if none came."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self._lines["stdout"]:
                    match = regex.search(line)
                    if match:
                        return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._finished_reading():
                    return None
                self._cond.wait(min(remaining, 0.1))

    def __repr__(self) -> str:
        return f"<Component {self.name} pid={self.pid}>"


@atexit.register
def _stop_forgotten_components() -> None:
    for component in list(_LIVE):
        component.stop(timeout=2.0)


# -- the factory -------------------------------------------------------------------


def plan(args: argparse.Namespace) -> list[tuple[str, str, list[str]]]:
    """``(name, module, args)`` of every program, in start order.

    Unless a user name was given for all, the observer, the controller and the dashboard
    connect with their role as user name: docker/acl grants what they read (everything,
    the alarms) to user names, since read rights that do not follow the topic tree cannot
    be tied to a client id.
    """
    programs: list[tuple[str, str, list[str]]] = []

    def as_user(role: str) -> list[str]:
        return [] if getattr(args, "username", None) else ["--username", role]

    if not args.no_observer:
        observer_args = ["--client-id", args.observer_id, *as_user("observer")]
        if args.observer_json:
            observer_args.append("--json")
        if args.stats_interval:
            observer_args += ["--stats-interval", str(args.stats_interval)]
        programs.append(("observer", "sim.observer", observer_args))
    if getattr(args, "metrics_port", None) is not None:
        # the Prometheus exporter (lesson 11); it reads like the observer
        exporter_args = ["--client-id", "exporter", "--metrics-port", str(args.metrics_port)]
        programs.append(("exporter", "sim.exporter", [*exporter_args, *as_user("observer")]))
    programs.append(
        (
            "controller",
            "sim.controller",
            [
                *("--client-id", args.controller_id, "--session", args.controller_session),
                *as_user("controller"),
            ],
        )
    )
    if not args.no_dashboard:
        programs.append(
            (
                "dashboard",
                "sim.dashboard",
                [
                    "--client-id",
                    args.dashboard_id,
                    "--http-host",
                    args.http_host,
                    "--http-port",
                    str(args.http_port),
                    *as_user("dashboard"),
                ],
            )
        )
    for kind in args.devices:
        device_args = [
            "--device",
            kind,
            "--device-id",
            kind,
            "--client-id",
            kind,
            "--seed",
            str(args.seed),
            "--time-scale",
            str(args.time_scale),
        ]
        if args.rate is not None:
            device_args += ["--rate", str(args.rate)]
        if args.anomaly:
            device_args.append("--anomaly")
        programs.append((kind, "sim.device", device_args))
    return programs


def machine_tls_env(folder: Path, name: str) -> dict[str, str]:
    """The ``VF_TLS_*`` variables of program ``name`` under ``--mtls FOLDER``: the folder's CA,
    and the certificate whose CN is the program's identity (a device's kind, or its role)."""
    return {
        "VF_TLS": "1",
        "VF_TLS_CA": str(folder / "ca.crt"),
        "VF_TLS_CERT": str(folder / f"{name}.crt"),
        "VF_TLS_KEY": str(folder / f"{name}.key"),
    }


def missing_certificates(folder: Path, names: Sequence[str]) -> list[str]:
    """The files ``--mtls FOLDER`` lacks for these programs (the CA first)."""
    wanted = ["ca.crt", *(f"{n}.{ext}" for n in names for ext in ("crt", "key"))]
    return [name for name in wanted if not (folder / name).is_file()]


class Programs:
    """The running programs, started in order and stopped in reverse groups."""

    def __init__(
        self, args: argparse.Namespace, echo: Echo, settings: BrokerSettings | None = None
    ) -> None:
        self.args = args
        self.echo = echo
        # Children read their connection settings from VF_* variables, all nine of them.
        self.env = {**os.environ, **(settings or BrokerSettings.from_env()).to_env()}
        self.components: list[Component] = []
        self.reported_exits: set[str] = set()

    def start(self, abort: Callable[[], bool]) -> None:
        """Start everything; the observer and controller first, then all devices together.

        :raises ComponentError: naming the first program that failed.
        """
        programs = plan(self.args)
        first = [p for p in programs if p[1] != "sim.device"]
        devices = [p for p in programs if p[1] == "sim.device"]
        for group in (first, devices):
            started = []
            for name, module, argv in group:
                if abort():
                    raise ComponentError("start interrupted")
                env = (
                    {**self.env, **machine_tls_env(self.args.mtls, name)}
                    if self.args.mtls
                    else self.env
                )
                component = Component(name, module, argv, env=env, echo=self.echo).start()
                self.components.append(component)
                started.append(component)
                log.info("started %s as pid %d", name, component.pid)
            deadline = time.monotonic() + self.args.ready_timeout
            for component in started:
                remaining = max(0.0, deadline - time.monotonic())
                component.wait_ready(remaining, abort=abort)
                log.info("%s is ready", component.name)

    def dashboard_url(self) -> str | None:
        """The address the dashboard printed (``dashboard at <url>``), if it runs."""
        for component in self.components:
            if component.name == "dashboard":
                match = component.wait_for_line(r"^dashboard at (\S+)$")
                return match.group(1) if match else None
        return None

    def check(self) -> int:
        """Report children that ended by themselves; return how many are still running."""
        running = 0
        for component in self.components:
            code = component.returncode
            if code is None:
                running += 1
            elif component.name not in self.reported_exits:
                self.reported_exits.add(component.name)
                log.warning(
                    "%s (pid %d) exited by itself with status %s; the rest keeps running",
                    component.name,
                    component.pid,
                    code,
                )
        return running

    def watch(self, stop: StopSignals, duration: float | None) -> int:
        """Keep an eye on the children until a stop signal or the end of ``duration``.

        :returns: 0, or 1 when every program has exited by itself.
        """
        all_exited = threading.Event()

        def check() -> None:
            if self.check() == 0:
                log.error("every program has exited; stopping")
                all_exited.set()

        if not stop.wait(duration, until=all_exited, every=0.2, tick=check):
            log.info("--duration %.1fs reached", duration)
        return 1 if all_exited.is_set() else 0

    def stop(self, timeout: float) -> None:
        """Devices first, then controller, then observer and dashboard; SIGTERM, wait, SIGKILL.

        Members of a group get SIGTERM together, so the whole stop takes about
        one ``timeout`` at worst per group, not one per program.
        """
        watchers = ("observer", "dashboard", "exporter")
        groups = [
            [c for c in self.components if c.name not in ("controller", *watchers)],
            [c for c in self.components if c.name == "controller"],
            [c for c in self.components if c.name in watchers],
        ]
        for group in groups:
            for component in group:
                component.signal(signal.SIGTERM)
            for component in group:
                code = component.stop(timeout)
                log.info("%s stopped (status %s)", component.name, code)


def _make_echo(width: int) -> Echo:
    def echo(name: str, stream_name: str, line: str) -> None:
        # write_line takes the lock our log lines take too: whole lines only.
        write_line(
            f"{name:<{width}} | {line}", sys.stdout if stream_name == "stdout" else sys.stderr
        )

    return echo


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sim.run_all",
        description="Run the whole virtual factory: observer, controller, dashboard and one "
        "device of each kind, until Ctrl-C, SIGTERM or --duration.",
        epilog="Exit status: 0 after a normal stop, 1 if a program failed to start "
        "(the error names it and shows its output).",
    )
    parser.add_argument("--anomaly", action="store_true", help="devices inject out-of-range values")
    parser.add_argument(
        "--controller-session",
        choices=("clean", "persistent"),
        default="clean",
        help="the controller's MQTT session (persistent: alarms queued while it is down "
        "are delivered when it comes back)",
    )
    parser.add_argument("--controller-id", default="controller", help="the controller's client id")
    parser.add_argument(
        "--seed", type=int, default=1, help="seed handed to every device (default 1)"
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="simulated seconds per real second (default 1)",
    )
    parser.add_argument(
        "--rate", type=float, help="telemetry rate per device in Hz (default: the device's)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        help="stop everything after this many seconds (default: run until stopped)",
    )
    parser.add_argument(
        "--devices",
        type=lambda text: [k.strip() for k in text.split(",") if k.strip()],
        default=list(DEVICE_KINDS),
        help=f"comma-separated device kinds to run (default: {','.join(DEVICE_KINDS)})",
    )
    parser.add_argument("--no-observer", action="store_true", help="do not start the observer")
    parser.add_argument("--observer-id", default="observer", help="the observer's client id")
    parser.add_argument("--observer-json", action="store_true", help="observer prints JSON lines")
    parser.add_argument(
        "--no-dashboard", action="store_true", help="do not start the dashboard (sim.dashboard)"
    )
    parser.add_argument(
        "--dashboard-id",
        default="dashboard",
        help="the dashboard's client id, also its name in command topics (default dashboard)",
    )
    parser.add_argument(
        "--http-host",
        default="127.0.0.1",
        help="address the dashboard serves on (default 127.0.0.1: this machine only)",
    )
    parser.add_argument(
        "--http-port",
        type=int,
        default=8080,
        help="port the dashboard serves on (default 8080; 0 picks a free one)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="also start the Prometheus exporter (sim.exporter) on 127.0.0.1:PORT/metrics "
        "(default: no exporter; see docs/observability.md)",
    )
    parser.add_argument(
        "--stats-interval",
        type=float,
        default=0.0,
        help="observer prints a stats table every S seconds (default: only at exit)",
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=20.0,
        help="seconds each group of programs has to print its ready line (default 20)",
    )
    parser.add_argument(
        "--stop-timeout",
        type=float,
        default=5.0,
        help="seconds a program has to exit after SIGTERM before it is killed (default 5)",
    )
    parser.add_argument(
        "--mtls",
        type=Path,
        metavar="DIR",
        help="run the factory under mutual TLS: every program verifies the broker with "
        "DIR/ca.crt and presents its own certificate DIR/<name>.crt and .key (<name>: the "
        "device kind, controller, observer, dashboard; their CN is that name). Make them with "
        "`python -m mqtt_factory_lab.certificates DIR` or openssl (docs/tls.md); the broker "
        "must be an mtls one (docker/variants/mtls.conf with docker/acl-machines)",
    )
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    unknown = [k for k in args.devices if k not in DEVICE_KINDS]
    if unknown:
        parser.error(
            f"unknown device kind(s) {', '.join(unknown)}; choose from {', '.join(DEVICE_KINDS)}"
        )
    if args.mtls is not None:
        missing = missing_certificates(args.mtls, [name for name, _, _ in plan(args)])
        if missing:
            owners = list(dict.fromkeys(m.rsplit(".", 1)[0] for m in missing if m != "ca.crt"))
            lacks = (["the CA certificate ca.crt"] if "ca.crt" in missing else []) + (
                [f"a certificate and key (<name>.crt, .key) for {', '.join(owners)}"]
                if owners
                else []
            )
            parser.error(
                f"--mtls {args.mtls} lacks {' and '.join(lacks)}; make the folder with "
                f"`python -m mqtt_factory_lab.certificates {args.mtls}` (or openssl, docs/tls.md)"
            )
    setup_logging("run_all: %(message)s")
    settings = broker_settings(parser, args)
    # SIGHUP too: the children run in sessions of their own, so a closed
    # terminal would not reach them, and dying of it would orphan them.
    with StopSignals((signal.SIGTERM, signal.SIGINT, signal.SIGHUP)) as stop:
        width = max(len(name) for name, _, _ in plan(args))
        factory = Programs(args, _make_echo(width), settings)
        try:
            log.info(
                "starting the factory on %s:%s (MQTT %s, topic root %r)",
                settings.host,
                settings.port,
                settings.protocol,
                settings.topic_root,
            )
            try:
                factory.start(lambda: stop.requested)
            except ComponentError as error:
                if stop.requested:
                    log.info("stopped during start")
                    return 0
                log.error("the factory could not start: %s", error)
                return 1
            url = factory.dashboard_url()
            if url:
                log.info("dashboard at %s", url)
            print_ready("run_all")
            return factory.watch(stop, args.duration)
        finally:
            log.info("stopping the factory")
            factory.stop(args.stop_timeout)
            log.info("stopped")


if __name__ == "__main__":
    sys.exit(main())
