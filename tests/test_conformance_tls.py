"""Conformance mode over TLS: real Mosquitto listeners at mqtts://, with mutual TLS, and at wss://.

The brokers are the lab's ``tls`` and ``mtls`` variants started directly (the runs under test
are child processes pointed at them with ``--broker-url``), with certificates made for this
module. The readiness probe must name each TLS failure for what it is — unknown CA, expired,
host name, a missing or refused client certificate — in one sentence without OpenSSL's
decorations, and never as "not authorized".
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from mqtt_factory_lab.brokers.base import free_port
from mqtt_factory_lab.brokers.local import LocalMosquitto, find_mosquitto
from mqtt_factory_lab.core.certificates import LabCertificates
from mqtt_factory_lab.core.connection import ConnectionSettings, try_connect
from tests.test_conformance import child_pytest, conformance

pytestmark = pytest.mark.skipif(
    find_mosquitto() is None, reason="these tests start mosquitto with the local backend"
)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> LabCertificates:
    return LabCertificates.create(tmp_path_factory.mktemp("certs"))


def _started(broker: LocalMosquitto) -> Iterator[LocalMosquitto]:
    try:
        broker.start()
        yield broker
    finally:
        broker.close()


@pytest.fixture(scope="module")
def tls_broker(certs: LabCertificates) -> Iterator[LocalMosquitto]:
    """``tls`` on one port, and a WebSockets-over-TLS listener (``ws_port``) beside it."""
    ws_port = free_port()
    extra = (
        f"listener {ws_port} 127.0.0.1\nprotocol websockets\n"
        "cafile /mosquitto/config/certs/ca.crt\n"
        "certfile /mosquitto/config/certs/server.crt\n"
        "keyfile /mosquitto/config/certs/server.key\n"
    )
    broker = LocalMosquitto("tls", certificates=certs, extra_config=extra)
    broker.ws_port = ws_port  # type: ignore[attr-defined]
    yield from _started(broker)


@pytest.fixture(scope="module")
def mtls_broker(certs: LabCertificates) -> Iterator[LocalMosquitto]:
    yield from _started(LocalMosquitto("mtls", certificates=certs))


@pytest.fixture(scope="module")
def flawed_brokers(certs: LabCertificates) -> Iterator[dict[str, LocalMosquitto]]:
    brokers = {
        "expired": LocalMosquitto(
            "tls", certificates=certs, server_certificate=certs.expired_server()
        ),
        "wrong-host": LocalMosquitto(
            "tls", certificates=certs, server_certificate=certs.wrong_host_server()
        ),
    }
    try:
        for broker in brokers.values():
            broker.start()
        yield brokers
    finally:
        for broker in brokers.values():
            broker.close()


@pytest.mark.parametrize(
    ("case", "kind", "words"),
    [
        ("other-ca", "tls_unknown_ca", ["unknown CA", "--broker-ca"]),
        ("expired", "tls_expired", ["certificate expired", "new certificate"]),
        ("wrong-host", "tls_hostname", ["host name mismatch", "host name"]),
        ("no-client-cert", "tls_cert_required", ["client certificate", "--broker-cert"]),
        ("stranger-client-cert", "tls_client_cert", ["client certificate", "--broker-key"]),
        ("plaintext-to-tls", "closed", []),
    ],
)
def test_the_probe_names_each_tls_failure(
    case, kind, words, certs, tls_broker, mtls_broker, flawed_brokers
):
    ca = str(certs.ca_file)
    stranger = certs.other_ca().client("press-01")
    settings = {
        "other-ca": ConnectionSettings(
            tls_broker.host, tls_broker.port, tls=True, ca=str(certs.other_ca().ca_file)
        ),
        "expired": ConnectionSettings("127.0.0.1", flawed_brokers["expired"].port, tls=True, ca=ca),
        "wrong-host": ConnectionSettings(
            "127.0.0.1", flawed_brokers["wrong-host"].port, tls=True, ca=ca
        ),
        "no-client-cert": ConnectionSettings(mtls_broker.host, mtls_broker.port, tls=True, ca=ca),
        "stranger-client-cert": ConnectionSettings(
            mtls_broker.host,
            mtls_broker.port,
            tls=True,
            ca=ca,
            cert=str(stranger.cert),
            key=str(stranger.key),
        ),
        "plaintext-to-tls": ConnectionSettings(tls_broker.host, tls_broker.port),
    }[case]
    outcome, _ = try_connect(settings, "3.1.1", timeout=3)
    sentence = outcome.sentence()
    assert not outcome.accepted and outcome.reason_code is None, sentence
    if case != "plaintext-to-tls":
        assert outcome.kind == kind, sentence
    for word in words:
        assert word in sentence, sentence
    assert "_ssl.c" not in sentence and "Not authorized" not in sentence, sentence
    assert "\n" not in sentence and "Traceback" not in sentence, f"one sentence: {sentence}"


def _broker_run(tmp_path: Path, url: str, *options: str) -> None:
    run = child_pytest(
        tmp_path, "labs/03_retained.py", "-m", "broker", f"--broker-url={url}", *options
    )
    assert run.returncode == 0 and run.outcomes, run.explain()
    failed = [n for n, o in run.outcomes.items() if o in ("failed", "error")]
    assert not failed, run.explain()


def test_lesson_broker_experiments_pass_over_mqtts(tmp_path, certs, tls_broker):
    _broker_run(tmp_path, f"mqtts://127.0.0.1:{tls_broker.port}", f"--broker-ca={certs.ca_file}")


def test_lesson_broker_experiments_pass_with_a_client_certificate(tmp_path, certs, mtls_broker):
    observer = certs.client("observer")
    _broker_run(
        tmp_path,
        f"mqtts://127.0.0.1:{mtls_broker.port}",
        f"--broker-ca={certs.ca_file}",
        f"--broker-cert={observer.cert}",
        f"--broker-key={observer.key}",
    )


def test_lesson_broker_experiments_pass_over_websockets_with_tls(tmp_path, certs, tls_broker):
    _broker_run(
        tmp_path, f"wss://127.0.0.1:{tls_broker.ws_port}/mqtt", f"--broker-ca={certs.ca_file}"
    )


def test_a_run_against_a_broker_it_cannot_verify_stops_once_with_the_reason(
    tmp_path, certs, tls_broker
):
    stranger_ca = certs.other_ca().ca_file
    run = child_pytest(
        tmp_path,
        "labs/03_retained.py",
        f"--broker-url=mqtts://127.0.0.1:{tls_broker.port}",
        f"--broker-ca={stranger_ca}",
    )
    assert run.returncode == pytest.ExitCode.USAGE_ERROR, run.explain()
    assert run.output.count("unknown CA") == 1, run.explain()
    assert "Traceback" not in run.output and "_ssl.c" not in run.output, run.explain()
    assert not run.outcomes


@pytest.mark.timeout(300)
def test_the_conformance_report_of_a_mutual_tls_broker(tmp_path, certs, mtls_broker):
    observer = certs.client("observer")
    run = conformance(
        tmp_path,
        f"--broker-url=mqtts://127.0.0.1:{mtls_broker.port}",
        f"--broker-ca={certs.ca_file}",
        f"--broker-cert={observer.cert}",
        f"--broker-key={observer.key}",
        "--labs",
        str(Path(__file__).resolve().parent.parent / "labs" / "03_retained.py"),
        "--out=mtls",
        "--",
        "-p",
        "no:xdist",
    )
    assert run.returncode == 0, run.explain()
    report = json.loads((tmp_path / "mtls" / "report.json").read_text())
    assert report["totals"]["passed"] > 0 and report["totals"]["failed"] == 0, report["totals"]
