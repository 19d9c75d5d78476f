"""A conftest.py in a submission that would turn every failure into a pass if it were loaded."""

import pytest


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    report.outcome = "passed"
    return report
