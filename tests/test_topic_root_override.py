"""A project may give its tests a topic root of its own, even a single level.

``topic_root`` is a fixture like pytest-httpserver's ``httpserver_listen_address``: a
project overrides it, and every fixture that builds topics or names follows.
"""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def topic_root() -> str:
    return f"plant{uuid.uuid4().hex[:8]}"


def test_a_one_level_topic_root_runs_a_whole_factory(factory, mqtt_client, topic_root):
    plant = factory(kinds=("press",))
    assert plant.topic_root == topic_root
    assert plant.controller is not None and plant.controller.is_running()
    late = mqtt_client()
    late.subscribe(f"{topic_root}/status/press", qos=1)
    status = late.wait_for_message(f"{topic_root}/status/press", why="the press is online")
    assert status.retain and status.json()["status"] == "online", status.describe()
