"""The suite's own order (tests/conftest.py, ``schedule_for_xdist``): long tests first, a lesson
module in one piece, the graded class on one worker.

These read the collection of the run they are part of: run alone (``-k``) they see little,
in ``scripts/test`` they see the whole suite.
"""

from __future__ import annotations

import pytest

from tests.conftest import DURATIONS_KEY, LONG, ONE_WORKER, pytest_xdist_make_scheduler


def test_a_lesson_module_runs_in_one_piece(request: pytest.FixtureRequest) -> None:
    modules: list[str] = []
    for item in request.session.items:
        path = item.nodeid.split("::")[0]
        if path.startswith("labs/") and (not modules or modules[-1] != path):
            modules.append(path)
    assert len(modules) == len(set(modules)), (
        f"a lesson module was split by the scheduling order (its module brokers would start "
        f"again, and a chapter would no longer read in order): {modules}"
    )


def test_a_costly_module_fixture_is_set_up_on_one_worker_only() -> None:
    class Config:  # what xdist's scheduler reads of a run with -n 2
        @staticmethod
        def getvalue(name: str) -> object:
            return {"dist": "load", "tx": ["popen", "popen"], "numprocesses": 2}.get(name)

    scheduler = pytest_xdist_make_scheduler(Config(), None)
    graded = [f"{module}::test_{n}" for module in ONE_WORKER for n in ("a", "b[x]")]
    assert graded, "ONE_WORKER names no module"
    scopes = {scheduler._split_scope(nodeid) for nodeid in graded}
    assert scopes == set(ONE_WORKER), f"one module, one work unit: {scopes}"
    others = ["tests/test_install.py::test_a", "tests/test_install.py::test_b"]
    assert {scheduler._split_scope(n) for n in others} == set(others), (
        "every other test is a unit of its own: it goes to whichever worker is free"
    )
    Config.getvalue = staticmethod(lambda name: "loadfile" if name == "dist" else None)
    assert pytest_xdist_make_scheduler(Config(), None) is None, "an explicit --dist is kept"


def test_what_is_known_to_be_long_starts_before_the_lessons(request: pytest.FixtureRequest) -> None:
    items = request.session.items
    first_lesson = next((k for k, i in enumerate(items) if i.nodeid.startswith("labs/")), None)
    if first_lesson is None:
        pytest.skip("no lesson in this run: nothing to start before")
    cache = getattr(request.config, "cache", None)
    timed = cache.get(DURATIONS_KEY, {}) if cache is not None else {}
    late = [
        item.nodeid
        for item in items[first_lesson:]
        if not item.nodeid.startswith("labs/")
        and (
            timed.get(item.nodeid, 0) >= LONG
            or (item.nodeid not in timed and "run_lesson" in item.fixturenames)
        )
    ]
    assert not late, f"long tests left to the end of the run, where they make its tail: {late}"
