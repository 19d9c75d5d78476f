"""The package's imports point one way: import-linter's contracts in pyproject.toml hold.

Entry points and fixtures above the core, the core above the brokers and the payload
contract, nothing above reaching down the wrong way, the core never importing the grader,
and nothing in ``mqtt_factory_lab`` importing the reference solution ``sim``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept() -> None:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint is None:
        pytest.fail("lint-imports is missing: install the dev extra (pip install -e '.[dev]')")
    done = subprocess.run(
        [lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"an import breaks the package's layers:\n{done.stdout[-3000:]}"
    assert "BROKEN" not in done.stdout and done.stdout.count("KEPT") == 3, done.stdout
