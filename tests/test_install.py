"""The lab installs as a package of its own, and another project uses its fixtures.

``pip install mqtt-factory-lab`` must put one importable package, ``mqtt_factory_lab``,
into site-packages (no generic ``harness`` or ``sim``), register the pytest plugin
through its ``pytest11`` entry point, and bring the files the fixtures need (broker
configuration, schemas, the reference solution) under ``<prefix>/share``.

This test builds the package from this checkout into a fresh virtual environment
(packages come from PyPI, pinned by ``requirements.lock``) and runs a test project
that lives outside the repository. It takes a while; it is what a user does first.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent

OUTSIDE_TEST = '''
"""A project of a platform team: nothing of the lab's checkout is here."""


def test_a_retained_message_reaches_a_late_subscriber(mqtt_client, topic_root):
    mqtt_client().publish(f"{topic_root}/state/press", b"running", qos=1, retain=True)
    late = mqtt_client(protocol="3.1.1")
    late.subscribe(f"{topic_root}/state/press", qos=1)
    message = late.wait_for_message(f"{topic_root}/state/press")
    assert message.retain and message.payload == b"running"


def test_the_installed_reference_device_comes_online(device):
    press = device("press")
    assert press.status["status"] == "online"
'''


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


# pip installs every dependency into a fresh venv: minutes on a busy machine, not 60 s
@pytest.mark.timeout(900)
def test_the_package_installs_under_its_own_name_and_serves_a_project_elsewhere(
    tmp_path, pytestconfig
):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "MQTT_LAB_"))}
    env.pop("PYTHONPATH", None)
    venv = tmp_path / "venv"
    # A fresh venv without a pip of its own (ensurepip costs ~5 s): this run's pip installs
    # into it (``pip --python``), every dependency from the index as a user's pip would.
    # ``--no-compile``: byte-compiling every dependency is pip's work, none of this test's
    # checks (what it imports is compiled as it is imported): 1.6 of its 14.5 CPU-s.
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env, 120)
    python = str(venv / "bin" / "python")
    run(
        [
            *(sys.executable, "-m", "pip", "--python", python),
            *("install", "-q", "--disable-pip-version-check", "--no-compile"),
            *("-c", str(PROJECT_ROOT / "requirements.lock"), str(PROJECT_ROOT)),
        ],
        tmp_path,
        env,
        600,
    )

    site = Path(
        run(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            tmp_path,
            env,
            60,
        ).strip()
    )
    top_level = sorted(
        p.name for p in site.iterdir() if p.suffix == "" and not p.name.startswith("_")
    )
    assert "mqtt_factory_lab" in top_level
    assert "sim" not in top_level and "harness" not in top_level, top_level
    for table in ("mqtt-3.1.1.tsv", "mqtt-5.tsv"):  # the conformance report's statement tables
        assert (site / "mqtt_factory_lab" / "conformance" / "statements" / table).is_file(), table
    shared = venv / "share" / "mqtt-factory-lab"
    for needed in (
        "docker/mosquitto.conf",
        "docker/acl-machines",  # the reference solution's [files] acl_machines
        "schemas/state.schema.json",
        "solution.toml",
        "sim/device.py",
    ):
        assert (shared / needed).is_file(), f"{needed} is not installed under {shared}"

    project = tmp_path / "platform-team"
    project.mkdir()
    (project / "test_our_broker.py").write_text(textwrap.dedent(OUTSIDE_TEST))
    backend = pytestconfig.getoption("--broker-backend")
    output = run(
        [python, "-m", "pytest", "-p", "no:cacheprovider", "-q", f"--broker-backend={backend}"],
        project,
        env,
        300,
    )
    assert "2 passed" in output, output
