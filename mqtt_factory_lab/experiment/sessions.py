"""Lesson 05's instruments: session settings, the press's alarms, and what the broker's log
says about a controller's session.

The chapter (``labs/05_sessions.py``) holds the concept and the experiments; this module what
they share:

* :func:`alarm`, :func:`session` — the press's alarm payload, and ``mqtt_client`` settings for
  a clean or a persistent session in each MQTT version;
* :func:`controller_connection`, :func:`which_cause` — the controller's connection as the
  broker logged it, and which of the three ways to lose a session it shows, with the fix;
* :func:`command_names` — the commands a list of messages carries.
"""

from __future__ import annotations

import contextlib
import time

from mqtt_factory_lab.brokers import LOG, Broker
from mqtt_factory_lab.brokers.mosquitto_log import Connection, connections, subscriptions
from mqtt_factory_lab.contract import validate
from mqtt_factory_lab.core.client import ReceivedMessage
from mqtt_factory_lab.core.process import ProcessTimeout, wait_until

#: how long an MQTT 5 session outlives its connection in these experiments, unless a test
#: is about expiry itself
EXPIRY = 60
PROMPT = 3.0


def alarm(state: str, value: float, device_id: str = "press-01") -> dict:
    """An alarm on a press's temperature, as the press publishes it (checked against its schema)."""
    return validate(
        "alarm",
        {
            "ts": time.time(),
            "device_id": device_id,
            "sensor": "temperature",
            "state": state,
            "value": value,
            "low": None,
            "high": 220.0,
            "severity": "critical" if state == "raised" else "warning",
            "message": f"temperature {value} C {'above' if state == 'raised' else 'back under'} "
            "220.0 C",
        },
    )


def session(protocol: str, persistent: bool, expiry: int = EXPIRY) -> dict:
    """``mqtt_client`` settings for a clean or a persistent session in each MQTT version."""
    if not persistent:
        return {"protocol": protocol, "clean_start": True}
    return {
        "protocol": protocol,
        "clean_start": False,
        "session_expiry": expiry if protocol == "5" else None,
    }


def controller_connection(broker: Broker, mark: int, ours: set[str]) -> Connection | None:
    """The controller's connection as the broker logged it since ``mark`` (None without a log).

    Every connection logged since ``mark`` that is not one of the lab's own clients is the
    controller's; the last one counts. Waits a moment for a log that is read with a delay
    (the docker backend).
    """
    if LOG not in broker.capabilities:
        return None

    def last_connection() -> Connection | None:
        theirs = [c for c in connections(broker.log_lines()[mark:]) if c.client_id not in ours]
        return theirs[-1] if theirs else None

    with contextlib.suppress(ProcessTimeout):
        return wait_until(last_connection, timeout=PROMPT)
    return None


def which_cause(
    broker: Broker, mark: int, client_id: str, protocol: str, first: Connection | None
) -> str:
    """Which of the three ways to lose a session the broker's log shows, with the fix.

    A session keeps queued alarms only with the same client id (checked before), clean start
    off (checked before), a QoS 1 subscription, and (MQTT 5) a session expiry > 0. The log
    has the subscription's QoS and the clean flag; the expiry is what remains.
    """
    keep = (
        "Keep the session: the same client id, clean start off (MQTT 5: a session expiry > 0) "
        "and a QoS 1 subscription to the alarms."
    )
    if LOG not in broker.capabilities or first is None:
        return keep
    logged = subscriptions(broker.log_lines()[mark:], first.client_id)
    if logged and all(qos == 0 for _filter, qos in logged):
        shown = ", ".join(dict.fromkeys(f"{f} at QoS {q}" for f, q in logged))
        return (
            f"The broker logged the controller's subscription: {shown}. Nothing is queued for a "
            "QoS 0 subscription, persistent session or not: subscribe to the alarms at QoS 1."
        )
    if protocol == "5" and not first.clean:
        return (
            "The broker logged clean start = 0 and a QoS 1 subscription, so the session ended "
            "at the disconnect: an MQTT 5 session with no Session Expiry Interval (0, the "
            "default) does not outlive its connection. Send SessionExpiryInterval > 0 in the "
            "CONNECT properties (for instance 3600)."
        )
    return keep


def command_names(messages: list[ReceivedMessage]) -> list[str]:
    """The ``command`` of each message (each checked against the command schema)."""
    return [validate("command", m.payload)["command"] for m in messages]
