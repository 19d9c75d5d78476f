"""``mqtt-lab conformance``: the lab's broker experiments as a conformance run a platform team
can put in CI.

A thin wrapper on ``pytest labs -m broker --broker-url URL`` that writes, into ``--out``:

``report.md``    capabilities, findings (each missing capability once), statements tested,
                 passed, failed and skipped per protocol, failures with their messages
``report.json``  the same, for machines (and for ``--compare``)
``junit.xml``    for CI test views; each experiment's protocol and statements are properties

Examples::

    python -m mqtt_factory_lab.conformance --broker-url mqtts://ci@broker.example:8883 --out out/
    MQTT_LAB_BROKER_PASSWORD=... python -m mqtt_factory_lab.conformance \\
        --broker-url mqtt://broker:1883 --broker-username ci --out out/
    python -m mqtt_factory_lab.conformance --broker-config deploy/mosquitto/ --out out/
    python -m mqtt_factory_lab.conformance --compare out-2.0.18/ out-2.0.20/ --out diff/

``--broker-config DIR`` starts the team's own ``mosquitto.conf`` (with its ACL and password
files, paths as in the eclipse-mosquitto image: ``/mosquitto/config/...``) with the local or
docker backend, runs the experiments against it, and stops it. Anything after ``--`` goes to
pytest (``-- -n 2``, ``-- -k retained``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from mqtt_factory_lab.conformance.spec import render_comparison
from mqtt_factory_lab.core import broker_options
from mqtt_factory_lab.core.connection import ENV_PASSWORD, mask_url
from mqtt_factory_lab.core.paths import LAB_ROOT, LABS_DIR


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``conformance`` options, for this module's :func:`main` or a ``mqtt-lab`` subcommand.

    The connection options come from the table pytest registers too
    (:data:`mqtt_factory_lab.core.broker_options.BROKER_OPTIONS`).
    """
    where = parser.add_argument_group(
        "the broker under test (one of --broker-url, --broker-config, --lab-broker)"
    )
    broker_options.add_to_argparse(where)
    where.add_argument(
        "--broker-config",
        metavar="DIR",
        type=Path,
        help="start this mosquitto configuration folder (mosquitto.conf, ACL, password file) "
        "and test it",
    )
    where.add_argument(
        "--lab-broker",
        action="store_true",
        help="judge the lab's own Mosquitto (what the lessons teach), started for the run",
    )
    where.add_argument(
        "--acl-matrix",
        metavar="FILE",
        type=Path,
        help="with --broker-config: hold the configuration's acl_file to this permission matrix "
        "(TOML, see docs/acl.md), cell by cell; without it the report says the ACL was not checked",
    )
    where.add_argument(
        "--broker-backend",
        choices=("auto", "local", "docker"),
        default="auto",
        help="how --broker-config is started (default: docker if an engine answers, else local)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("conformance-report"), help="report folder"
    )
    parser.add_argument("--labs", type=Path, default=LABS_DIR, help="the lessons to run")
    parser.add_argument(
        "--compare",
        nargs=2,
        metavar="REPORT",
        type=Path,
        help="instead of a run: two report.json files (or their folders) side by side, "
        "written to OUT/compare.md",
    )
    parser.add_argument("pytest_args", nargs="*", help="after --: more pytest arguments")


def _load(path: Path) -> dict[str, Any]:
    file = path / "report.json" if path.is_dir() else path
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise SystemExit(f"conformance: cannot read the report {file}: {error}") from None


def compare(a: Path, b: Path, out: Path | None) -> str:
    """Render two reports side by side; write ``out/compare.md`` when ``out`` is given."""
    text = render_comparison(_load(a), _load(b))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.md").write_text(text)
    return text


def pytest_command(args: argparse.Namespace, url: str, notes: tuple[str, ...] = ()) -> list[str]:
    """The pytest command line of a conformance run (the password stays in the environment)."""
    out = args.out.resolve()
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(args.labs),
        "-m",
        "broker",
        f"--broker-url={url}",
        f"--conformance-report={out}",
        f"--junitxml={out / 'junit.xml'}",
        "-o",
        "junit_family=xunit2",
        "-o",
        "python_files=[0-9][0-9]_*.py test_*.py",
        "-p",
        "no:cacheprovider",
        "-rs",
    ]
    command += broker_options.passed_on(vars(args))
    command += [f"--conformance-note={note}" for note in notes]
    return [*command, *args.pytest_args]


def run(args: argparse.Namespace) -> int:
    """Run the conformance experiments (or compare two reports); return an exit status."""
    if args.compare:
        print(compare(*args.compare, args.out), end="")
        return 0
    chosen = [
        name
        for name, given in (
            ("--broker-url", args.broker_url is not None),
            ("--broker-config", args.broker_config is not None),
            ("--lab-broker", args.lab_broker),
        )
        if given
    ]
    if len(chosen) != 1:
        why = (
            f"give one of them, not {' and '.join(chosen)}"
            if chosen
            else f"none was given (and ${broker_options.ENV_URL} is not set)"
        )
        print(
            "conformance: say which broker to judge: --broker-url URL (a broker you run), "
            "--broker-config DIR (your mosquitto.conf, started for the run) or --lab-broker "
            f"(the lab's own Mosquitto); {why}",
            file=sys.stderr,
        )
        return USAGE_ERROR
    if args.broker_url is not None and not args.broker_url.strip():
        print(
            f"conformance: --broker-url is empty (or ${broker_options.ENV_URL} is set to "
            "nothing): give the URL of the broker to judge, such as mqtt://broker.example:1883",
            file=sys.stderr,
        )
        return USAGE_ERROR
    if args.acl_matrix is not None and args.broker_config is None:
        print(
            "conformance: --acl-matrix holds a configuration's ACL to a matrix: it goes with "
            "--broker-config DIR",
            file=sys.stderr,
        )
        return USAGE_ERROR
    if args.broker_url:
        print(f"conformance: judging {mask_url(args.broker_url)}", flush=True)
        note = (
            "The broker's ACL was not held to a permission matrix: the lab does not choose "
            "this broker's configuration (use --broker-config DIR --acl-matrix FILE)."
        )
        return _run_pytest(args, args.broker_url, (note,))
    from mqtt_factory_lab.brokers import BrokerError, create_broker, resolve_backend

    try:
        backend = resolve_backend(args.broker_backend)
        options = {"config_source": args.broker_config.resolve()} if args.broker_config else {}
        broker = create_broker(backend, "open", **options)
        with broker:
            what = (
                f"--broker-config {args.broker_config}"
                if args.broker_config
                else "the lab's own Mosquitto"
            )
            print(f"conformance: judging {what} ({backend}), started at {broker.url}", flush=True)
            notes = [f"The broker judged: {what}, started by the lab ({backend} backend)."]
            status_acl = None
            if args.broker_config is not None:
                acl = acl_file_of(args.broker_config)
                if args.acl_matrix is None:
                    notes.append(
                        "The configuration's ACL was not held to a permission matrix"
                        + (f" ({acl.name})" if acl else " (it names no acl_file)")
                        + ": give --acl-matrix FILE to check it cell by cell."
                    )
                elif acl is None:
                    print(
                        f"conformance: --acl-matrix: {args.broker_config}/mosquitto.conf names "
                        "no acl_file to check",
                        file=sys.stderr,
                    )
                    return USAGE_ERROR
                else:
                    status_acl = _run_acl_matrix(args, acl, backend)
                    notes.append(
                        f"The configuration's ACL ({acl.name}) was held to the permission matrix "
                        f"{args.acl_matrix}: "
                        + ("every cell passed" if status_acl == 0 else "some cells FAILED")
                        + " (acl-matrix/report.md)."
                    )
            status = _run_pytest(args, broker.url, tuple(notes))
            return status if status_acl in (None, 0) else (status or status_acl)
    except BrokerError as error:
        print(f"conformance: the broker could not start:\n{error}", file=sys.stderr)
        _fallback_report(
            args, f"--broker-config {args.broker_config}", f"it could not start: {error}"
        )
        return 3


def secret_out_of_url(args: argparse.Namespace, url: str) -> tuple[str, dict[str, str]]:
    """``url`` without its password, and the environment that carries the password instead.

    A child's command line is world-readable (``ps``, ``/proc/PID/cmdline``); its
    environment is not. The child pytest reads the password from ``--broker-password-env``.
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url, {}
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{parts.username}@{host}" if parts.username else host
    variable = getattr(args, "broker_password_env", None) or ENV_PASSWORD
    return urlunsplit(parts._replace(netloc=netloc)), {variable: unquote(parts.password)}


def acl_file_of(folder: Path) -> Path | None:
    """The ACL file a configuration folder's ``mosquitto.conf`` names (``acl_file``), found
    beside it (paths as in the eclipse-mosquitto image: ``/mosquitto/config/acl``)."""
    conf = folder / "mosquitto.conf"
    try:
        text = conf.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == "acl_file":
            found = folder / Path(words[1]).name
            return found if found.is_file() else None
    return None


def _run_acl_matrix(args: argparse.Namespace, acl: Path, backend: str) -> int:
    """Lesson 06's permission matrix, cell by cell, against the team's ACL (its own report)."""
    out = args.out.resolve() / "acl-matrix"
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(args.labs / "06_acl.py"),
        "-k",
        "matrix",
        f"--acl-file={acl.resolve()}",
        f"--acl-matrix={args.acl_matrix.resolve()}",
        f"--broker-backend={backend}",
        f"--conformance-report={out}",
        f"--conformance-note=Permission matrix {args.acl_matrix} against {acl}",
        "-p",
        "no:cacheprovider",
        "-q",
    ]
    print(f"conformance: the permission matrix {args.acl_matrix} against {acl}", flush=True)
    return subprocess.run(command, cwd=LAB_ROOT, check=False).returncode


#: pytest's exit status for a usage error (and this command's)
USAGE_ERROR = 4


def _fallback_report(args: argparse.Namespace, broker: str, what: str) -> None:
    """A run that ended before pytest wrote its report still leaves one, saying why."""
    out = args.out.resolve()
    if (out / "report.md").is_file():
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(
        f"# MQTT conformance report: {broker}\n\nNo experiment ran: {what}\n"
    )
    (out / "report.json").write_text(
        json.dumps(
            {
                "format": "mqtt-factory-lab conformance report 2",
                "broker": broker,
                "error": what,
                "totals": {},
            },
            indent=2,
        )
        + "\n"
    )


def _run_pytest(args: argparse.Namespace, url: str, notes: tuple[str, ...] = ()) -> int:
    url, secret = secret_out_of_url(args, url)
    env = {**os.environ, **secret}
    command = pytest_command(args, url, notes)
    shown = " ".join(mask_url(part) for part in command[2:])
    print(f"conformance: {shown}", flush=True)
    out = args.out.resolve()
    for stale in ("report.md", "report.json"):
        (out / stale).unlink(missing_ok=True)
    status = subprocess.run(command, cwd=LAB_ROOT, env=env, check=False).returncode
    _fallback_report(
        args, mask_url(url), f"pytest ended with exit status {status} (see its output)"
    )
    print(f"conformance: {out / 'report.md'}, {out / 'report.json'}, {out / 'junit.xml'}")
    if status == 0 and not _judged_anything(out / "report.json"):
        print(
            "conformance: no experiment could judge this broker (every one was skipped): see "
            "the findings in the report",
            file=sys.stderr,
        )
        return 1
    return status


def _judged_anything(report: Path) -> bool:
    try:
        totals = json.loads(report.read_text()).get("totals", {})
    except (OSError, ValueError):
        return False
    return any(totals.get(o, 0) for o in ("passed", "failed", "error"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mqtt_factory_lab.conformance",
        description="Run the lab's broker experiments against a broker and write a "
        "conformance report (Markdown, JSON, JUnit XML).",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
