"""Lesson 08 grades TLS clients and per-machine ACLs: it passes the reference and catches each broken one.

Each broken solution under ``tests/broken/lesson08_*`` is the reference with one mistake
(``tests/broken/mutate.py`` patches paho inside the program, or the ACL is wrong); the lesson
(``-m solution``) must fail exactly the experiment of that mistake, with a message naming the
TLS concept and the fix. The certificates and the broker folders they go into are checked
here too (what the docker backend mounts is what ``render()`` writes).
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from mqtt_factory_lab.brokers.config import BrokerConfigError, render
from mqtt_factory_lab.brokers.tls import broker_tls
from mqtt_factory_lab.core.certificates import LabCertificates, common_name, not_after
from mqtt_factory_lab.core.paths import DOCKER_DIR
from mqtt_factory_lab.fixtures.tls import StoppedLater

LESSON = "labs/08_tls.py"
BROKEN = Path(__file__).parent / "broken"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
WRITE = "test_acl_machines_lets_each_certificate_write_only_its_own_topics"
MACHINES = "test_solution_machines_connect_with_their_certificates_and_keep_to_their_topics"
MITM = "test_solution_refuses_a_broker_it_cannot_verify"


def test_the_reference_passes_every_solution_experiment(run_lesson):
    result = run_lesson(LESSON, "-m", "solution")
    assert result.returncode == 0 and not result.failed(), result.output
    assert len(result.passed()) == 16, result.outcomes


@pytest.mark.parametrize(
    ("broken", "must_fail", "says"),
    [
        pytest.param(
            "device_skips_verification",
            [f"{MITM}[device]"],
            ["man-in-the-middle", "VF_TLS_CA", "tls_insecure_set(True)"],
            id="device-skips-verification",
        ),
        pytest.param(
            "device_ignores_client_cert",
            [f"{MACHINES}[mqtt3.1.1]", f"{MACHINES}[mqtt5]"],
            ["Mutual TLS", "VF_TLS_CERT", "certificate"],
            id="device-ignores-client-cert",
        ),
        pytest.param(
            "any_certificate_writes_anywhere",
            [
                f"{WRITE}[{who}]"
                for who in (
                    "press-01",
                    "oven-01",
                    "controller",
                    "dashboard",
                    "observer",
                    "datacenter",
                )
            ],
            [
                "may NOT write",
                "pattern write factory/telemetry/%u/#",
                "never `pattern write factory/#`",
            ],
            id="any-certificate-writes-anywhere",
        ),
    ],
)
def test_a_broken_solution_fails_exactly_the_experiment_of_its_mistake(
    run_lesson, broken, must_fail, says
):
    result = run_lesson(LESSON, "-m", "solution", solution=BROKEN / f"lesson08_{broken}")
    assert sorted(result.failed()) == sorted(must_fail), result.output
    for name in must_fail:
        message = result.message(name)
        for phrase in says:
            assert phrase in message, f"{name} should say {phrase!r}:\n{message}"
        assert "Traceback" not in message and "_ssl.c" not in message, message


def test_a_solution_without_acl_machines_is_told_which_entry_to_add(run_lesson, tmp_path):
    manifest = tmp_path / "solution.toml"
    manifest.write_text(
        '[solution]\nname = "no acl_machines"\n\n[roles.device]\ncommand = ["{python}", "-c", "pass"]\n'
    )
    result = run_lesson(LESSON, "-m", "solution", "-k", WRITE, solution=manifest)
    assert result.failed(), result.output
    assert "[files] acl_machines" in result.message(WRITE), result.output


def test_certificates_are_made_per_run_with_private_keys(tmp_path):
    certs = LabCertificates.create(tmp_path / "certs")
    press = certs.client("press-01")
    assert common_name(press.cert) == "press-01" and press.identity == "press-01"
    assert stat.S_IMODE(press.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(certs.server().key.stat().st_mode) == 0o600
    assert stat.S_IMODE(certs.folder.stat().st_mode) == 0o700
    assert certs.client("press-01") is press, "one certificate per identity and run"
    import datetime as dt

    assert not_after(certs.expired_server().cert) < dt.datetime.now(dt.UTC)
    assert certs.other_ca().ca_file.read_bytes() != certs.ca_file.read_bytes()
    assert press.env()["VF_TLS_CERT"] == str(press.cert)
    with pytest.raises(ValueError, match="plain name"):
        certs.client("../escape")


def test_no_certificate_or_key_is_committed():
    tracked = os.popen(f"git -C {PROJECT_ROOT} ls-files").read().split()
    assert not [p for p in tracked if p.endswith((".key", ".pem", ".crt"))], tracked


@pytest.mark.parametrize("container", [False, True], ids=["local", "docker"])
def test_a_tls_broker_folder_carries_the_certificates_under_its_variant_paths(tmp_path, container):
    certs = LabCertificates.create(tmp_path / "certs")
    tls = broker_tls(("mtls", "acl", "persistent"), certs)
    assert tls is not None and tls.mutual
    root = tmp_path / "broker"
    rendered = render(
        "mtls+acl+persistent",
        root,
        port=1883,
        bind_address=None if container else "127.0.0.1",
        local_paths=not container,
        acl_file=DOCKER_DIR / "acl-machines",
        tls=tls,
    )
    files = rendered.files
    assert {"certs/ca.crt", "certs/server.crt", "certs/server.key"} <= set(files), files
    text = (rendered.config_dir / "conf.d" / "mtls.conf").read_text()
    prefix = "/mosquitto/config/certs" if container else f"{root}/config/certs"
    assert f"certfile {prefix}/server.crt" in text and "require_certificate true" in text
    assert text.index("listener 1883") < text.index("certfile"), "options follow their listener"
    assert "\nlistener" not in "\n" + rendered.main_file.read_text(), "one listener: the TLS one"
    key = files["certs/server.key"]
    mode = stat.S_IMODE(key.stat().st_mode)
    if not container:
        assert mode == 0o600
    else:  # the image's mosquitto user (any uid) reads it; nobody else reaches the folder
        assert mode == 0o644
        assert stat.S_IMODE(rendered.root.stat().st_mode) == 0o700, "the folder above is ours"
    assert files["acl"].read_text() == (DOCKER_DIR / "acl-machines").read_text()


def test_tls_and_mtls_do_not_combine(tmp_path):
    with pytest.raises(BrokerConfigError, match="mtls already includes tls"):
        render("tls+mtls", tmp_path / "b", port=1883, tls=broker_tls(("tls", "mtls")))


def test_acl_machines_keeps_the_lab_sync_space():
    from mqtt_factory_lab.core.client import SYNC_PREFIX

    rule = f"pattern readwrite {SYNC_PREFIX}/%c/#"
    for acl in (DOCKER_DIR / "acl-machines", PROJECT_ROOT / "starter" / "acl-machines"):
        assert rule in acl.read_text().splitlines(), f"{acl} must keep {rule!r}"


@pytest.mark.parametrize("broken", ["device_skips_verification", "device_ignores_client_cert"])
def test_a_device_mistake_carries_the_reference_acl_unchanged(broken):
    """A solution's [files] live in its folder: these variants carry a copy of the reference's
    ACL, which must stay the reference's, or they would test two mistakes at once."""
    copy = BROKEN / f"lesson08_{broken}" / "acl_machines"
    assert copy.read_text() == (DOCKER_DIR / "acl-machines").read_text(), (
        f"{copy} differs from docker/acl-machines: copy it again (cp docker/acl-machines {copy})"
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="handing a key to another user needs root")
def test_a_program_run_as_another_user_reads_its_own_key_and_no_other():
    """The class grader (as root) runs students' programs as an unprivileged user."""
    import subprocess

    certs = LabCertificates.create()  # in the system's temp folder, as under the grader
    try:
        other = certs.client("oven-01")
        mine = certs.handout("press-01", 65534, 65534)

        def readable(path: Path) -> bool:
            done = subprocess.run(
                ["cat", str(path)], user=65534, group=65534, capture_output=True, check=False
            )
            return done.returncode == 0

        assert readable(mine.key) and readable(mine.cert) and readable(mine.ca)
        assert common_name(mine.cert) == "press-01"
        assert not readable(other.key), "another machine's key must stay out of reach"
        assert not readable(certs.server().key), "the broker's key must stay out of reach"
    finally:
        certs.remove()


def test_an_unusable_certificate_file_is_one_sentence_in_the_lab(tmp_path):
    import subprocess
    import sys

    certs = LabCertificates.create(tmp_path / "certs")
    press, oven = certs.client("press-01"), certs.client("oven-01")
    cases = {
        "is not the private key of": [f"--broker-ca={certs.ca_file}", f"--broker-cert={press.cert}", f"--broker-key={oven.key}"],
        "cannot be used as the CA certificate": [f"--broker-ca={press.key}"],
    }  # fmt: skip
    for says, options in cases.items():
        done = subprocess.run(
            [
                *(sys.executable, "-m", "pytest", LESSON, "-p", "no:cacheprovider", "-q"),
                *("--broker-url=mqtts://127.0.0.1:8883", *options),
            ],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        output = (done.stdout + done.stderr).strip()
        assert done.returncode == 4 and says in output, output  # a usage error, before any test
        assert "Traceback" not in output and "_ssl.c" not in output, output


@pytest.mark.parametrize("flaw", ["missing-ca", "key-of-another-machine"])
def test_an_unusable_certificate_file_is_one_sentence_in_the_reference_device(tmp_path, flaw):
    import subprocess
    import sys

    certs = LabCertificates.create(tmp_path / "certs")
    env = {**os.environ, **certs.client("press-01").env(), "VF_BROKER_PORT": "1"}
    if flaw == "missing-ca":
        env["VF_TLS_CA"], says = str(tmp_path / "nowhere.crt"), "no such file"
    else:
        env["VF_TLS_KEY"], says = str(certs.client("oven-01").key), "is not the private key"
    done = subprocess.run(
        [sys.executable, "-m", "sim.device", "--device", "press"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0 and says in output, output
    assert "Traceback" not in output and "_ssl.c" not in output, output


def test_stopped_later_stops_a_broker_after_its_programs_and_waits_for_all_at_close():
    stopper, program_stopping, order = StoppedLater(), threading.Event(), []

    def program() -> None:
        program_stopping.wait(10)
        order.append("program")

    stopper(program)
    stopper(lambda: order.append("broker"), after_the_rest=True)
    stopper(lambda: order.append("other program"))  # not held up by the broker
    program_stopping.set()
    stopper.close()
    assert order.index("program") < order.index("broker") and len(order) == 3, order
