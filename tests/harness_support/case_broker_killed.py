"""Run by tests/test_harness.py in a child pytest: a broker dies under a waiting test.

The first test kills its dedicated broker and then waits for a message that
cannot come; its failure report must say that the broker is not running and
show the broker's log. The next two show that a killed *shared* broker is
started again for the following test.
"""

from __future__ import annotations


def test_dedicated_broker_killed_while_waiting(make_broker, mqtt_client, topic_root):
    broker = make_broker()
    listener = mqtt_client(broker=broker)
    listener.subscribe(f"{topic_root}/telemetry/#", qos=1)
    broker.kill()
    listener.wait_for_message(f"{topic_root}/telemetry/#", timeout=0.5)


def test_shared_broker_killed(broker):
    broker.kill()
    assert not broker.is_running()


def test_shared_broker_is_back_for_the_next_test(broker, mqtt_client, topic_root):
    client = mqtt_client()
    client.subscribe(f"{topic_root}/#", qos=1)
    client.publish(f"{topic_root}/status/press-01", {"status": "online"}, qos=1)
    assert client.wait_for_message(f"{topic_root}/#", timeout=2).json() == {"status": "online"}
