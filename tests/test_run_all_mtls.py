"""``sim.run_all --mtls DIR``: the whole factory under mutual TLS, one certificate per program.

The broker is the lab's ``mtls+acl`` with ``docker/acl-machines``, whose rules follow each
certificate's identity; the folder is the one ``python -m mqtt_factory_lab.certificates DIR``
makes. Every program must connect as its own identity, nothing may be denied, and the
dashboard must keep working: it shows the devices and its commands reach them.
"""

from __future__ import annotations

import json
import re
import urllib.request

from mqtt_factory_lab.brokers.base import free_port
from mqtt_factory_lab.certificates import factory_identities
from mqtt_factory_lab.core.certificates import export
from mqtt_factory_lab.core.paths import DOCKER_DIR
from mqtt_factory_lab.core.process import wait_until

CONNECTED_AS = re.compile(r"New client connected from \S+ as (\S+) \(.*u'([^']*)'")


def test_run_all_mtls_runs_the_factory_with_a_certificate_per_program(
    sim_program, make_broker, lab_certificates, tls_client, tmp_path
):
    broker = make_broker("mtls+acl", acl_file=DOCKER_DIR / "acl-machines")
    folder = tmp_path / "certs"
    export(lab_certificates, folder, factory_identities())
    watch = tls_client("observer", broker=broker)
    watch.subscribe("factory/state/press", qos=1)
    mark = broker.log_mark()
    port = free_port()
    factory = sim_program(
        "sim.run_all",
        *("--mtls", str(folder), "--devices", "press,conveyor", "--time-scale", "60"),
        *("--http-port", str(port)),
        broker=broker,
        topic_root="factory",
        ready_timeout=40,
        stop_timeout=15,
    )
    assert f"run_all: dashboard at http://127.0.0.1:{port}/" in factory.output()

    def identities() -> dict[str, str]:
        return {
            m.group(1): m.group(2)
            for line in broker.log_lines()[mark:]
            if (m := CONNECTED_AS.search(line))
        }

    expected = {n: n for n in ("observer", "controller", "dashboard", "press", "conveyor")}
    wait_until(lambda: expected.items() <= identities().items(), timeout=10)

    # The dashboard works: it has seen the press, and its stop reaches it through the ACL.
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/commands",
        data=json.dumps({"device": "press", "command": "stop", "reason": "mtls"}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    wait_until(lambda: _post(request) == 202, timeout=10)
    watch.wait_for_message(
        lambda m: m.json().get("state") == "stopped",
        timeout=10,
        why="the dashboard's stop (as CN=dashboard) must reach the press under acl-machines",
    )
    denied = [line for line in broker.log_lines()[mark:] if "Denied" in line]
    assert not denied, "run_all --mtls must work within docker/acl-machines:\n" + "\n".join(
        denied[:5]
    )


def _post(request: urllib.request.Request) -> int:
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:  # 400 until the dashboard has seen the press
        return error.code


def test_run_all_mtls_names_the_certificates_it_lacks(run_program, tmp_path, nowhere):
    done = run_program("sim.run_all", "--mtls", str(tmp_path), "--devices", "press", broker=nowhere)
    assert done.returncode == 2, done
    assert "ca.crt" in done.stderr and "press" in done.stderr, done.stderr
    assert "python -m mqtt_factory_lab.certificates" in done.stderr
    assert "Traceback" not in done.stderr
