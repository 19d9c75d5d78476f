"""``python -m mqtt_factory_lab.bench --only ingest`` keeps its one-line contract (issue 19).

The benchmark prints figures, never pass/fail; what is checked here is its shape (one line,
``ratio N``) and that the data center it runs, as a user runs it, lost and doubled nothing.
"""

from __future__ import annotations

import re
import subprocess
import sys

from mqtt_factory_lab.core.paths import LAB_ROOT


def test_bench_only_ingest_prints_one_line_with_the_ratio_and_nothing_lost() -> None:
    command = [sys.executable, "-m", "mqtt_factory_lab.bench", "--only", "ingest"]
    done = subprocess.run(
        [*command, "--ingest-batches", "3"],
        cwd=LAB_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout
    assert re.search(r"; ratio \d+\.\d\d$", lines[0]), lines[0]
    assert "python -m sim.datacenter" in lines[0], lines[0]
    stored = re.search(r"\((\d+) stored, 0 QoS 1 lost, 0 duplicated\)", lines[0])
    received = re.search(r"\((\d+) received\)", lines[0])
    assert stored and received and stored.group(1) == received.group(1), lines[0]
