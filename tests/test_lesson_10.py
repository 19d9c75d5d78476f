"""Lesson 10 (bridges) grades bridge configurations: it passes the reference and catches each
broken one in ``tests/broken/lesson10_*`` with a message naming the concept."""

from __future__ import annotations

from pathlib import Path

import pytest

from mqtt_factory_lab.brokers.config import BrokerConfigError
from mqtt_factory_lab.core.bridge import BRIDGE_TEMPLATE, render_bridge

LESSON = "labs/10_bridge.py"
BROKEN = Path(__file__).parent / "broken"

PREFIX = "test_site_topics_arrive_in_the_cloud_under_the_site_prefix"
DIRECTION = "test_cloud_commands_reach_the_site_only_on_command_topics"
QOS = "test_bridge_keeps_each_message_qos"
OUTAGE = "test_qos1_messages_published_while_the_cloud_is_away_arrive_when_it_returns"
STATE = "test_bridge_state_is_retained_on_its_notification_topic"
LOOP = "test_no_message_comes_back_across_the_bridge"
ALL = (PREFIX, DIRECTION, QOS, OUTAGE, STATE, LOOP)


def test_the_reference_bridge_passes_every_solution_experiment(run_lesson):
    run = run_lesson(LESSON, "-m", "solution")
    assert run.returncode == 0 and not run.failed(), run.output[-3000:]
    for experiment in ALL:
        assert run.passed(experiment), f"{experiment} did not run: {sorted(run.outcomes)}"


@pytest.mark.parametrize(
    ("broken", "catches", "says"),
    [
        pytest.param(
            "always_clean",
            {OUTAGE},
            ["cleansession true", "Set `cleansession false`", "queues its QoS 1"],
            id="cleansession-true",
        ),
        pytest.param(
            "no_remote_prefix",
            {PREFIX},
            ["remote prefix", "sites/{site}/", "tell the plants apart"],
            id="no-remote-prefix",
        ),
        # `#` both ways is two mistakes in one line: it lets every cloud topic in, and what
        # goes out comes back (the cloud takes the bridge for an ordinary client).
        pytest.param(
            "both_ways",
            {DIRECTION, LOOP},
            ["a loop", "try_private true", "No Local"],
            id="hash-both-ways",
        ),
    ],
)
def test_a_broken_bridge_fails_the_experiments_that_teach_its_rule(
    run_lesson, broken, catches, says
):
    run = run_lesson(LESSON, "-m", "solution", solution=BROKEN / f"lesson10_{broken}")
    failed = {name.split("[")[0] for name in run.failed()}
    assert failed == catches, (
        f"{broken} should fail exactly {sorted(catches)}; failed {sorted(failed)}\n"
        f"{run.output[-3000:]}"
    )
    messages = " ".join(run.message(name) for name in catches)
    for words in says:
        assert words in messages, f"{broken}: the failure should say {words!r}:\n{messages}"
    assert "Traceback" not in messages, messages
    if broken == "both_ways":
        assert "`topic factory/# both`" in run.message(DIRECTION), run.message(DIRECTION)


def test_the_lab_renders_the_cloud_address_into_a_bridge():
    text = render_bridge(
        BRIDGE_TEMPLATE.read_text(), cloud_host="cloud", cloud_port=1883, site="p1"
    )
    assert "address cloud:1883" in text
    assert 'topic factory/# out 1 "" sites/p1/' in text
    assert "{" not in text.replace('""', "")


def test_a_bridge_with_an_unknown_placeholder_or_no_address_is_refused_clearly():
    with pytest.raises(BrokerConfigError, match=r"\{cloud_ip\}.*knows \{cloud_host\}"):
        render_bridge(
            "connection c\naddress {cloud_ip}:1883\n", cloud_host="h", cloud_port=1, site="s"
        )
    with pytest.raises(BrokerConfigError, match="no `address` line"):
        render_bridge("connection c\ntopic # out\n", cloud_host="h", cloud_port=1, site="s")
