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
from mqtt_factory_lab.core.connection import ENV_PASSWORD, mask_url
from mqtt_factory_lab.core.paths import LAB_ROOT, LABS_DIR

#: the options passed on to pytest unchanged
_PASSED_ON = (
    "broker_url_mqtt5",
    "broker_username",
    "broker_password_env",
    "broker_ca",
    "broker_cert",
    "broker_key",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``conformance`` options, for this module's :func:`main` or a ``mqtt-lab`` subcommand."""
    where = parser.add_argument_group("the broker under test")
    where.add_argument("--broker-url", metavar="URL", help="mqtt://, mqtts://, ws:// or wss:// URL")
    where.add_argument("--broker-url-mqtt5", metavar="URL", help="MQTT 5 on another listener")
    where.add_argument(
        "--broker-username", metavar="NAME", help=f"login; the password comes from ${ENV_PASSWORD}"
    )
    where.add_argument(
        "--broker-password-env",
        metavar="VARIABLE",
        help=f"the variable holding the password (default {ENV_PASSWORD})",
    )
    where.add_argument("--broker-ca", metavar="FILE", help="CA certificate of a TLS listener")
    where.add_argument("--broker-cert", metavar="FILE", help="client certificate (mutual TLS)")
    where.add_argument("--broker-key", metavar="FILE", help="client certificate's key")
    where.add_argument(
        "--broker-config",
        metavar="DIR",
        type=Path,
        help="start this mosquitto configuration folder (mosquitto.conf, ACL, password file) "
        "and test it; without --broker-url or --broker-config the lab's own open broker is tested",
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


def pytest_command(args: argparse.Namespace, url: str) -> list[str]:
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
    for name in _PASSED_ON:
        value = getattr(args, name, None)
        if value is not None:
            command.append(f"--{name.replace('_', '-')}={value}")
    return [*command, *args.pytest_args]


def run(args: argparse.Namespace) -> int:
    """Run the conformance experiments (or compare two reports); return an exit status."""
    if args.compare:
        print(compare(*args.compare, args.out), end="")
        return 0
    if args.broker_url and args.broker_config:
        print("conformance: give --broker-url or --broker-config, not both", file=sys.stderr)
        return 4
    if args.broker_url:
        return _run_pytest(args, args.broker_url)
    from mqtt_factory_lab.brokers import BrokerError, create_broker, resolve_backend

    try:
        backend = resolve_backend(args.broker_backend)
        options = {"config_source": args.broker_config.resolve()} if args.broker_config else {}
        broker = create_broker(backend, "open", **options)
        with broker:
            what = f"--broker-config {args.broker_config}" if args.broker_config else "the lab's"
            print(f"conformance: started {what} broker ({backend}) at {broker.url}", flush=True)
            return _run_pytest(args, broker.url)
    except BrokerError as error:
        print(f"conformance: the broker could not start:\n{error}", file=sys.stderr)
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


def _run_pytest(args: argparse.Namespace, url: str) -> int:
    url, secret = secret_out_of_url(args, url)
    command = pytest_command(args, url)
    shown = " ".join(mask_url(part) for part in command[2:])
    print(f"conformance: {shown}", flush=True)
    env = {**os.environ, **secret}
    status = subprocess.run(command, cwd=LAB_ROOT, env=env, check=False).returncode
    out = args.out.resolve()
    if (out / "report.md").is_file():
        print(f"conformance: {out / 'report.md'}, {out / 'report.json'}, {out / 'junit.xml'}")
    return status


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
