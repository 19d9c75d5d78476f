"""``sandbox up``, ``down``, ``status`` and ``logs``: the sandbox's life, like compose's.

``up`` starts the programs of :mod:`.plan` one after the other, each once the previous is
ready (an MQTT CONNECT for the broker, a ready line for the rest, the page answering for
the dashboard), and returns; the programs keep running detached. ``down`` stops exactly
what the state folder names (pid and start time), then every process still carrying the
sandbox's tag: nothing is left, even after ``up`` was killed half way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TextIO

import psutil

from mqtt_factory_lab.core.process import ProcessTimeout, wait_until
from mqtt_factory_lab.sandbox import broker as sandbox_broker
from mqtt_factory_lab.sandbox import tls as sandbox_tls
from mqtt_factory_lab.sandbox.plan import (
    CHOCOLATE_ID,
    DATACENTER_ID,
    DEVICES,
    Options,
    programs,
)
from mqtt_factory_lab.sandbox.ports import port_problem
from mqtt_factory_lab.sandbox.processes import (
    StartError,
    family,
    program_env,
    spawn,
    tagged,
    terminate,
    wait_for_line,
)
from mqtt_factory_lab.sandbox.state import Record, StateDir

Say = Callable[[str], None]


def _say(text: str) -> None:
    print(text, flush=True)


def broker_env(port: int, mtls: str | None = None, identity: str | None = None) -> dict[str, str]:
    """The VF_* variables a program of the sandbox connects with; under ``--mtls`` (the
    certificate folder) also its ``VF_TLS_*``, presenting ``identity``'s certificate."""
    env = {"VF_BROKER_HOST": sandbox_broker.HOST, "VF_BROKER_PORT": str(port)}
    if mtls:
        env.update(sandbox_tls.env_for(mtls, identity))
    return env


#: whose certificate each program of the plan presents (run_all gives its children theirs)
_IDENTITY = {"factory": None, "datacenter": DATACENTER_ID, "chocolate": CHOCOLATE_ID}


def running_records(state: StateDir) -> list[Record]:
    return [r for r in state.records() if _is_running(r)]


def _is_running(record: Record) -> bool:
    if record.container:
        try:
            return sandbox_broker.running(record)
        except Exception:  # no engine any more: nothing of ours runs there
            return False
    return record.process() is not None


# -- up ------------------------------------------------------------------------------


def up(
    state: StateDir,
    options: Options,
    say: Say = _say,
    timeout: float = 30.0,
    make_certificates: bool = True,
) -> int:
    """Start the sandbox; 0 once the dashboard serves, 1 (everything stopped) if not.

    :param make_certificates: under ``options.mtls``, make the certificate folder when it
        lacks a file (the sandbox's own folder); ``False``: a folder the user gave, which
        must hold them all.
    """
    state.prepare()
    already = running_records(state) or tagged(state)
    if already:
        settings = state.settings()
        where = f" ({settings['dashboard']})" if settings.get("dashboard") else ""
        say(
            f"the sandbox already runs{where} from {state.path}: `mqtt-lab sandbox status` "
            "shows it, `mqtt-lab sandbox down` stops it"
        )
        return 1
    for port, what, option in (
        (options.port, "the broker", "--port"),
        (options.http_port, "the dashboard", "--http-port"),
        *(
            [(options.metrics_port, "the exporter", "--metrics-port")]
            if options.metrics_port
            else []
        ),
    ):
        problem = port_problem(port, what, option)
        if problem:
            say(f"mqtt-lab sandbox up: {problem}")
            return 1
    for stale in state.records():
        state.forget(stale.name)
    for log in state.log_dir.glob("*.log"):
        log.unlink()
    started = time.monotonic()
    env = program_env(state, broker_env(options.port))
    scheme = "mqtts" if options.mtls else "mqtt"
    settings = {
        **asdict(options),
        "started": time.time(),
        "broker_url": f"{scheme}://{sandbox_broker.HOST}:{options.port}",
        "pid": os.getpid(),
    }
    state.write_settings(settings)
    try:
        if options.mtls:
            folder = sandbox_tls.prepare(Path(options.mtls), make=make_certificates)
            say(f"  certificates {folder}")
        backend, why = sandbox_broker.choose_backend(options.broker_backend)
        settings["backend"] = backend
        state.write_settings(settings)
        sandbox_broker.start(state, backend, options.port, options.acl, env, options.mtls)
        variant = sandbox_broker.variant(options.acl, bool(options.mtls))
        say(
            f"  broker      {settings['broker_url']}  mosquitto, {backend} ({why}), "
            f"variant {variant}   {time.monotonic() - started:4.1f} s"
        )
        if options.acl and options.chocolate:
            acl = "docker/acl-machines" if options.mtls else "docker/acl"
            say(
                f"  chocolate   not started: {acl} has no rules for the chocolate line "
                "(per-machine ACLs are its seed's next step); run without --acl to see it"
            )
            options = Options(**{**asdict(options), "chocolate": False})
        for program in programs(options, state.database):
            mine = program_env(
                state,
                broker_env(options.port, options.mtls, _IDENTITY.get(program.name, program.name)),
            )
            record = spawn(state, program.name, program.argv, mine)
            match = wait_for_line(record, program.ready, timeout)
            if program.name == "dashboard":
                settings["dashboard"] = match.group(1)
                _wait_for_page(match.group(1), record, timeout)
                state.write_settings(settings)
            say(
                f"  {program.name:<11} pid {record.pid:<7} {program.what}"
                f"   {time.monotonic() - started:4.1f} s"
            )
    except (StartError, OSError) as error:
        say(f"mqtt-lab sandbox up: could not start the sandbox: {error}")
        say("stopping what had started:")
        down(state, say)
        return 1
    except KeyboardInterrupt:
        say("interrupted; stopping what had started:")
        down(state, say)
        return 130
    seconds = time.monotonic() - started
    observer = f"python -m sim.observer --port {options.port} --username observer"
    if options.mtls:
        where = Path(options.mtls)
        observer = (
            f"python -m sim.observer --port {options.port} --tls-ca {where / 'ca.crt'} "
            f"--tls-cert {where / 'observer.crt'} --tls-key {where / 'observer.key'}"
        )
    say(
        f"\nthe sandbox runs ({seconds:.1f} s):\n"
        f"  dashboard   {settings['dashboard']}\n"
        f"  broker      {settings['broker_url']}   ({observer})\n"
        f"  logs        {state.log_dir}   (mqtt-lab sandbox logs [COMPONENT] [-f])\n"
        f"  state       {state.path}\n"
        "next: `mqtt-lab sandbox status`, `mqtt-lab sandbox fault --help`, "
        "`mqtt-lab sandbox down`"
    )
    return 0


def _wait_for_page(url: str, record: Record, timeout: float) -> None:
    def serves() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    try:
        wait_until(serves, timeout, interval=0.05, stop_early=lambda: record.process() is None)
    except ProcessTimeout:
        raise StartError(f"the dashboard printed {url} but the page does not answer") from None


def foreground(state: StateDir, say: Say = _say) -> int:
    """Keep watching until Ctrl-C or SIGTERM, then stop everything."""
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set())
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    say("running in the foreground: Ctrl-C stops the sandbox")
    reported: set[str] = set()
    try:
        while not stop.wait(0.5):
            for record in state.records():
                if record.name not in reported and not _is_running(record):
                    reported.add(record.name)
                    say(f"{record.name} (pid {record.pid}) has exited; see its log {record.log}")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    say("stopping the sandbox:")
    return down(state, say)


# -- down ----------------------------------------------------------------------------


def down(state: StateDir, say: Say = _say, timeout: float = 5.0) -> int:
    """Stop every program of the sandbox, newest first; 0 when nothing of it runs."""
    records = state.records()
    if not records and not tagged(state):
        say(f"the sandbox is not running (nothing recorded in {state.path})")
        state.clear_settings()
        return 0
    for record in reversed(records):
        if record.name == sandbox_broker.NAME:
            try:
                was = _is_running(record)
                sandbox_broker.stop(record, timeout)
                say(f"  stopped broker{'' if was else ' (it was not running)'}")
            except Exception as error:  # the engine is gone: its container with it
                say(f"  broker: could not reach its container ({error})")
            state.forget(record.name)
            continue
        process = record.process()
        if process is None:
            say(f"  {record.name} (pid {record.pid}) was not running")
        else:
            killed = terminate(family(process), timeout)
            note = f", {len(killed)} killed after {timeout:g} s" if killed else ""
            say(f"  stopped {record.name} (pid {record.pid}{note})")
        state.forget(record.name)
    strays = tagged(state)
    if strays:
        names = ", ".join(f"{p.pid}" for p in strays)
        terminate(strays, timeout)
        say(f"  stopped {len(strays)} more process(es) of the sandbox: pid {names}")
    left = tagged(state)
    state.clear_settings()
    if left:
        say(f"could not stop pid {', '.join(str(p.pid) for p in left)}")
        return 1
    say("the sandbox is stopped; nothing of it runs")
    return 0


# -- status --------------------------------------------------------------------------


def _uptime(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _label(process: psutil.Process) -> str:
    try:
        argv = process.cmdline()
    except psutil.Error:
        return "?"
    if "--device-id" in argv:
        return argv[argv.index("--device-id") + 1]
    module = next((a for a in argv if a.startswith("sim.")), "")
    return module.removeprefix("sim.") or process.name()


def status(state: StateDir, window: float = 10.0, out: TextIO = sys.stdout) -> int:
    """A table of every program, and what the broker says about each (retained status)."""
    from mqtt_factory_lab.sandbox.watch import listen

    settings = state.settings()
    records = state.records()
    if not records:
        print(f"the sandbox is not running (nothing recorded in {state.path})", file=out)
        return 3
    port = int(settings.get("port", 1884))
    seen = listen(port, window, settings.get("mtls"))
    now = time.time()
    rows = [("COMPONENT", "PID", "UP", "MQTT STATUS", f"MSGS/{window:g}s")]
    for record in records:
        process = record.process()
        if record.name == sandbox_broker.NAME:
            up_state = "running" if _is_running(record) else "EXITED"
            answers = "answers" if seen.connected else "DOES NOT ANSWER"
            rows.append(
                (
                    "broker",
                    str(record.pid or record.container[:12]),
                    _up(record, now, up_state),
                    answers,
                    str(seen.total),
                )
            )
            continue
        rows.append(
            (
                record.name,
                str(record.pid),
                _up(record, now, "running" if process else "EXITED"),
                seen.status_of(record.name),
                str(seen.count_of(record.name)),
            )
        )
        if process is not None and record.name == "factory":
            for child in family(process)[1:]:
                name = _label(child)
                with_time = now - child.create_time()
                rows.append(
                    (
                        f"  {name}",
                        str(child.pid),
                        _uptime(with_time),
                        seen.status_of(name),
                        str(seen.count_of(name)),
                    )
                )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(),
            file=out,
        )
    rows_stored = _datacenter_rows(state.database)
    if rows_stored is not None:
        print(f"\ndata center: {rows_stored} messages stored in {state.database}", file=out)
    if settings.get("dashboard"):
        print(f"dashboard: {settings['dashboard']}", file=out)
    return 0 if all(_is_running(r) for r in records) and seen.connected else 1


def _up(record: Record, now: float, state: str) -> str:
    return _uptime(now - record.create_time) if state == "running" else state


def _datacenter_rows(database: Path) -> int | None:
    if not database.exists():
        return None
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=2) as db:
            return db.execute("SELECT COUNT(*) FROM mqtt_messages").fetchone()[0]
    except sqlite3.Error:
        return None


# -- logs ----------------------------------------------------------------------------


def logs(state: StateDir, component: str | None, follow: bool, out: TextIO = sys.stdout) -> int:
    """Print a component's log (a device's lines from the factory's log), or all of them."""
    broker = state.record(sandbox_broker.NAME)
    if broker is not None and broker.container:
        with contextlib.suppress(Exception):  # the engine is gone: keep the last copy
            sandbox_broker.write_log(state, broker)
    files = {path.stem: path for path in sorted(state.log_dir.glob("*.log"))}
    prefix = ""
    if component and component not in files:
        if "factory" in files and component in (*DEVICES, "observer", "controller"):
            prefix = f"{component} "  # run_all prefixes its children's lines: "press      | ..."
            files = {component: files["factory"]}
        else:
            print(
                f"no log for {component!r}; the sandbox's logs: {', '.join(files) or 'none'}",
                file=out,
            )
            return 2
    elif component:
        files = {component: files[component]}
    if not files:
        print(f"no logs in {state.log_dir}: is the sandbox running?", file=out)
        return 2
    label = len(files) > 1
    width = max(map(len, files))

    def emit(name: str, line: str) -> None:
        if prefix and not (line.startswith(prefix) or line.startswith(prefix.rstrip() + "|")):
            return
        print(f"{name:<{width}} | {line}" if label else line, file=out, flush=True)

    positions: dict[str, int] = {}
    for name, path in files.items():
        with path.open("rb") as log:
            for raw in log:
                emit(name, raw.decode(errors="replace").rstrip("\n"))
            positions[name] = log.tell()
    if not follow:
        return 0
    try:
        while True:
            for name, path in files.items():
                with path.open("rb") as log:
                    log.seek(positions[name])
                    for raw in log:
                        if raw.endswith(b"\n"):
                            emit(name, raw.decode(errors="replace").rstrip("\n"))
                            positions[name] += len(raw)
            time.sleep(0.2)  # tail -f: nothing to synchronise with, only a terminal to feed
    except KeyboardInterrupt:
        return 0
