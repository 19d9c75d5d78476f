"""Hidden experiments an instructor adds with ``mqtt-lab grade --extra-tests DIR``.

They use the lab's fixtures like any lesson; ``@pytest.mark.points`` sets what they are worth,
``@pytest.mark.lesson`` the gradebook column they count in (without it: ``extra``).
Named ``hidden_*.py`` so that the lab's own test run does not collect them.
"""

import pytest

from mqtt_factory_lab.contract import validate


@pytest.mark.lesson(3)
@pytest.mark.solution
@pytest.mark.points(5)
def test_hidden_state_names_the_device_kind(device, mqtt_client):
    oven = device("oven")
    dashboard = mqtt_client()
    dashboard.subscribe(oven.topic("state"), qos=1)
    message = dashboard.wait_for_message(
        oven.topic("state"), why="A device keeps its state retained on its state topic."
    )
    state = validate("state", message.payload)
    assert state["kind"] == "oven", (
        f"The state on {oven.topic('state')} must name the device's kind ('oven'), "
        f"not {state['kind']!r}."
    )


@pytest.mark.solution
@pytest.mark.points(3)
def test_hidden_online_status_gives_its_reason(device, mqtt_client):
    press = device("press")
    assert press.status["reason"] == "connected", (
        f"An 'online' status says why: reason 'connected', not {press.status.get('reason')!r}."
    )
