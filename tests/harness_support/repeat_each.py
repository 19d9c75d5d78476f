"""A pytest plugin for the slow lane: ``-p repeat_each --lab-repeat 20`` runs every test 20 times.

Each repetition is a parameter (``[...-run7]``), as pytest-repeat does it, so every run has
its own function-scoped fixtures (a new broker session, new programs) and its own outcome in
the JUnit XML. ``tests/test_slow_lane.py`` loads it into a child pytest (``PYTHONPATH``).
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--lab-repeat",
        type=int,
        default=1,
        metavar="N",
        help="run every selected test N times (the slow lane's repeated verdicts)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    runs = metafunc.config.getoption("--lab-repeat")
    if runs > 1:
        metafunc.fixturenames.append("lab_repetition")
        metafunc.parametrize("lab_repetition", range(1, runs + 1), ids=lambda i: f"run{i}")
