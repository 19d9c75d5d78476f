"""``python -m sim.bad_actor``: what the ACL broker does to forbidden publishes and subscribes.

Against the ``acl`` variant (``docker/acl``) nothing the bad actor tries may
get through, and the report must say *how* the broker stopped it: an MQTT 5
reason code, or a silent drop proven by a round trip. Against the open
broker the same attempts all succeed, which shows the probe can tell.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

PUBLISHES = ("impersonate-controller", "overwrite-state", "fake-telemetry")
SUBSCRIBES = ("subscribe-everything", "subscribe-sys", "subscribe-other-private")
FIELDS = {"action", "topic", "qos", "protocol", "outcome", "reason_code", "evidence"}


@pytest.fixture
def run_bad_actor(run_program) -> Callable[..., dict[str, dict]]:
    """``run_bad_actor(*args, broker=..., topic_root=..., protocol=...)``: its reports by attempt.

    It runs with ``--json`` and must exit 0 with a ready line and one report per attempt.
    """

    def run(*args: str, **where: object) -> dict[str, dict]:
        result = run_program("sim.bad_actor", "--json", *args, timeout=60, **where)
        assert result.returncode == 0, (
            f"bad_actor should exit 0 once every attempt ran; it exited {result.returncode}\n"
            f"stderr:\n{result.stderr}"
        )
        lines = result.stdout.splitlines()
        assert lines and lines[0].startswith("ready "), (
            f"first line should be 'ready <id>': {lines}"
        )
        reports = [json.loads(line) for line in lines[1:]]
        for report in reports:
            assert set(report) >= FIELDS, f"report lacks {FIELDS - set(report)}: {report}"
        by_name = {r["attempt"]: r for r in reports}
        assert set(by_name) == set(PUBLISHES + SUBSCRIBES), f"attempts reported: {sorted(by_name)}"
        return by_name

    return run


def describe(reports: dict[str, dict]) -> str:
    return "\n".join(
        f"  {name}: {r['outcome']} ({r['reason_code']}) {r['evidence']}"
        for name, r in reports.items()
    )


def test_mqtt5_publishes_are_denied_with_reason_code_135(make_broker, run_bad_actor):
    acl = make_broker("acl")
    mark = acl.log_mark()
    reports = run_bad_actor(broker=acl, topic_root="factory", protocol="5")
    for name in PUBLISHES:
        report = reports[name]
        assert (report["outcome"], report["reason_code"]) == ("denied", 135), (
            f"{name}: bad-actor may not write {report['topic']}; an MQTT 5 broker answers the "
            f"QoS 1 PUBLISH with PUBACK 135 'Not authorized'. Reports:\n{describe(reports)}"
        )
        assert report["protocol"] == "5" and report["qos"] == 1
    assert reports["impersonate-controller"]["topic"] == "factory/commands/controller/press"
    line = acl.wait_for_log(
        r"Denied PUBLISH from bad-actor .*factory/commands/controller/press", since=mark
    )
    assert "q1" in line


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_forbidden_subscriptions_deliver_nothing(make_broker, run_bad_actor, protocol):
    acl = make_broker("acl")
    reports = run_bad_actor(broker=acl, topic_root="factory", protocol=protocol)
    for name in SUBSCRIBES:
        report = reports[name]
        # Mosquitto's acl_file grants every SUBSCRIBE and filters each message at
        # delivery ("dropped"); a broker that refuses in the SUBACK says "denied".
        assert report["outcome"] in ("denied", "dropped"), (
            f"{name}: {report['topic']} is not readable by bad-actor, so nothing may arrive "
            f"through it. Reports:\n{describe(reports)}"
        )
        if report["outcome"] == "dropped":
            assert "round trip" in report["evidence"], "a drop is proven by a round trip"
        else:
            assert report["reason_code"] in (128, 135)
    assert reports["subscribe-other-private"]["topic"] == "lab/sync/bad-actor-probe/#"


def test_mqtt311_publishes_are_dropped_silently_and_proven(make_broker, run_bad_actor):
    acl = make_broker("acl")
    mark = acl.log_mark()
    reports = run_bad_actor(broker=acl, topic_root="factory", protocol="3.1.1")
    for name in PUBLISHES:
        report = reports[name]
        assert report["outcome"] == "dropped" and report["reason_code"] is None, (
            f"{name}: MQTT 3.1.1 cannot refuse a PUBLISH, so Mosquitto acknowledges it and "
            f"drops it; the probe must prove the drop. Reports:\n{describe(reports)}"
        )
        assert "lab/sync/bad-actor-probe/" in report["evidence"], (
            "the evidence names the probe's round trip topic"
        )
    acl.wait_for_log(r"Denied PUBLISH from bad-actor .*factory/state/press", since=mark)


def test_open_broker_lets_everything_through(run_bad_actor, unique_id):
    client_id = unique_id("bad")
    for protocol in ("5", "3.1.1"):
        reports = run_bad_actor("--client-id", client_id, protocol=protocol)
        assert {r["outcome"] for r in reports.values()} == {"allowed"}, (
            f"the open broker has no ACL: every attempt succeeds (MQTT {protocol}), "
            f"which shows the checks can tell success from failure.\n{describe(reports)}"
        )
