"""``mqtt-lab sandbox up|status|logs|down|fault``: the command line of the sandbox."""

from __future__ import annotations

import argparse
from pathlib import Path

from mqtt_factory_lab.brokers import BACKENDS
from mqtt_factory_lab.sandbox.plan import DEFAULT_HTTP_PORT, DEFAULT_PORT, Options
from mqtt_factory_lab.sandbox.state import StateDir, default_state_dir


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sandbox = commands.add_parser(
        "sandbox",
        help="the whole factory on this machine: up, status, logs, fault, down",
        description="Run the whole factory on this machine: a broker (port 1884, docker/ "
        "configuration), the Virtual Factory's devices, controller and observer, the "
        "chocolate line with its data center, and the dashboard (port 8080). Like "
        "`docker compose`: `up` starts it in the background, `down` stops all of it.",
    )
    sandbox.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help=f"where pids and logs are kept (default {default_state_dir()}; "
        "$MQTT_LAB_SANDBOX_STATE)",
    )
    actions = sandbox.add_subparsers(dest="action", required=True, metavar="ACTION")
    # `--state-dir` is accepted after the action too (`sandbox up --state-dir DIR`)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir", dest="action_state_dir", type=Path, default=None, help=argparse.SUPPRESS
    )
    real_add = actions.add_parser

    def add_action(name: str, **kwargs: object) -> argparse.ArgumentParser:
        return real_add(name, parents=[common], **kwargs)  # type: ignore[arg-type]

    actions.add_parser = add_action  # type: ignore[method-assign]

    up = actions.add_parser("up", help="start everything; return once the dashboard serves")
    up.add_argument("--port", type=int, default=DEFAULT_PORT, help="broker port (default 1884)")
    up.add_argument(
        "--http-port", type=int, default=DEFAULT_HTTP_PORT, help="dashboard port (default 8080)"
    )
    up.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="also run the Prometheus exporter on 127.0.0.1:PORT/metrics (docs/observability.md)",
    )
    up.add_argument("--acl", action="store_true", help="the broker enforces docker/acl (lesson 06)")
    up.add_argument(
        "--persistent-controller",
        action="store_true",
        help="the controller keeps a persistent session: alarms wait for it (lesson 05)",
    )
    up.add_argument("--anomaly", action="store_true", help="devices push sensors out of range")
    up.add_argument("--no-chocolate", action="store_true", help="no chocolate line, no data center")
    up.add_argument(
        "--broker-backend",
        choices=[b for b in BACKENDS if b != "external"],
        default="auto",
        help="docker, local mosquitto, or auto (docker when an engine answers; default)",
    )
    up.add_argument(
        "--foreground", action="store_true", help="stay in the terminal; Ctrl-C stops everything"
    )
    up.add_argument(
        "--timeout", type=float, default=30.0, help="seconds each program has to get ready"
    )
    up.add_argument(
        "--mtls",
        nargs="?",
        const="",
        default=None,
        type=str,
        metavar="DIR",
        help="mutual TLS (lesson 08): the broker takes only TLS connections with a client "
        "certificate and each program presents its own (CN = its identity); DIR holds them "
        "(`python -m mqtt_factory_lab.certificates DIR`), default: made in the state folder. "
        "With --acl the rules follow the certificates (docker/acl-machines)",
    )
    up.set_defaults(sandbox_run=_up)

    status = actions.add_parser("status", help="every program: pid, up time, MQTT status, traffic")
    status.add_argument(
        "--window",
        type=float,
        default=10.0,
        help="seconds to listen and count messages (default 10; --window 2 for a quick look)",
    )
    status.set_defaults(sandbox_run=lambda args, state: _lifecycle().status(state, args.window))

    logs = actions.add_parser("logs", help="a program's output (a device's: its name)")
    logs.add_argument("component", nargs="?", help="broker, factory, press, ..., dashboard")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.set_defaults(
        sandbox_run=lambda args, state: _lifecycle().logs(state, args.component, args.follow)
    )

    down = actions.add_parser("down", help="stop everything up started")
    down.set_defaults(sandbox_run=lambda args, state: _lifecycle().down(state))

    from mqtt_factory_lab.sandbox import faults

    faults.add_parser(actions, common)
    sandbox.set_defaults(run=run)


def _lifecycle():  # type: ignore[no-untyped-def]
    from mqtt_factory_lab.sandbox import lifecycle

    return lifecycle


def _up(args: argparse.Namespace, state: StateDir) -> int:
    lifecycle = _lifecycle()
    options = Options(
        port=args.port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        acl=args.acl,
        persistent_controller=args.persistent_controller,
        anomaly=args.anomaly,
        chocolate=not args.no_chocolate,
        broker_backend=args.broker_backend,
        # `--mtls` alone: the sandbox's own folder, made when it lacks a certificate
        mtls=None if args.mtls is None else str(Path(args.mtls or state.path / "certs").resolve()),
    )
    code = lifecycle.up(state, options, timeout=args.timeout, make_certificates=not args.mtls)
    if code == 0 and args.foreground:
        return lifecycle.foreground(state)
    return code


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    state_dir = getattr(args, "action_state_dir", None) or args.state_dir
    return int(args.sandbox_run(args, StateDir(state_dir)) or 0)
