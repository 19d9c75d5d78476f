"""Failure messages speak the lesson's language, never the harness's.

No regex escapes (``'^ready\\ line\\-1$'``), no ``satisfying <lambda>``: the expected line
is quoted as text, a line glued to other output is named as such, and identical failures are
one mistake (:mod:`mqtt_factory_lab.core.mistakes`).
"""

from __future__ import annotations

import re
import sys

import pytest

from mqtt_factory_lab.core.client import _describe_matcher
from mqtt_factory_lab.core.mistakes import group, mistake_key, same_as
from mqtt_factory_lab.core.roles import RoleError, RoleProcess


def run(code: str) -> RoleProcess:
    return RoleProcess("controller", "controller-1", [sys.executable, "-c", code]).start()


def test_a_ready_line_glued_to_other_output_is_named_as_such():
    program = run("print('ready controller-1', end=''); print('subscribed', flush=True)")
    try:
        with pytest.raises(RoleError) as error:
            program.wait_for_output(
                f"^{re.escape('ready controller-1')}$", 2, line="ready controller-1"
            )
    finally:
        program.close()
    message = str(error.value)
    assert "printed 'ready controller-1', but not alone on its line" in message, message
    assert "'ready controller-1subscribed'" in message and "flush=True" in message
    assert "\\" not in message.split("command:")[0], message


def test_a_missing_ready_line_is_quoted_as_text_not_as_a_regex():
    program = run("print('hello', flush=True)")
    try:
        with pytest.raises(RoleError) as error:
            program.wait_for_output(
                f"^{re.escape('ready line-897607')}$", 2, line="ready line-897607"
            )
    finally:
        program.close()
    message = str(error.value)
    assert "exited before printing 'ready line-897607'" in message, message
    assert "\\" not in message, message


def test_a_predicate_is_described_without_its_python_name():
    assert "lambda" not in _describe_matcher(lambda m: True)

    def stopped_state(m) -> bool:
        """the press's state, stopped"""
        return True

    assert _describe_matcher(stopped_state) == "a message (the press's state, stopped)"


def test_failures_that_differ_only_by_topic_and_ids_are_one_mistake():
    first = "labs/06_acl.py:300: AssertionError\nbad-actor may NOT read factory/state/press-01."
    second = "bad-actor may NOT read factory/alarms/oven-01/temperature."
    other = "press-01 may NOT read factory/state/oven-01."
    assert mistake_key(first) == mistake_key(second) != mistake_key(other)
    assert mistake_key(f"{second}\n{same_as('test_x[a]')}") == mistake_key(second)
    groups = group([("a", first), ("b", second), ("c", other)])
    assert [g.names for g in groups] == [["a", "b"], ["c"]]
