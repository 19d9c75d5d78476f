"""Lesson 07's verdicts: what a batch's trace, a dead letter and a crash's records must show.

The chapter (``labs/07_traceability.py``) holds the concept and the experiments; the cases
they judge (a production run, a killed data center, a malformed payload...) are pytest-free,
in :mod:`mqtt_factory_lab.core.traceability`; this module the checks that read them:

* :func:`trace_break` — the first place a batch's events stop telling where its lots went
  (a step missing from its recipe's route, an input nobody produced, a QC point without a
  result, a finished lot never shipped), as a sentence;
* :func:`dead_letter_problem` — what is wrong with how a data center took a malformed
  payload (it died, lost the valid record after it, dropped the payload, stored it
  re-encoded, or trusted it as a record), as a sentence;
* :func:`policy_break` — the first message of a type published at the wrong QoS, with the
  wrong retain flag or breaking its schema, as a sentence;
* :func:`duplicate_problem` — the msg_ids a crash left stored twice, records and retained
  states told apart (they have different causes and the same fix), as a sentence.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from mqtt_factory_lab.core.client import ReceivedMessage
from mqtt_factory_lab.core.traceability import (
    DeadLetter,
    KilledDatacenter,
    last_packaging_outputs,
    valid_or_reason,
)

#: the steps whose machines publish a quality result for every batch that gets there
QC_STEPS = ("s3_refining", "s5_tempering", "s8_packaging")


def _lots(events: list[dict[str, Any]], kind: str, field: str, step: str | None = None) -> set:
    return {
        lot["lot"]
        for e in events
        if e["event"] == kind and (step is None or e["step"] == step)
        for lot in (e["shipment"]["lots"] if field == "shipment" else e[field])
    }


def trace_break(
    batch_id: str, recipe: str, route: list[str], events: list[dict[str, Any]], checked: set[str]
) -> str | None:
    """Where the trace of one batch breaks, or None.

    :param route: the steps a ``recipe`` batch goes through, in order.
    :param events: the batch's valid batch events (arrival order is not relied on: events
        of different machines come over different connections, and MQTT orders the messages
        of one publisher, not of several).
    :param checked: the steps that published a quality result for the batch.
    """
    kinds = [e["event"] for e in events]
    if "batch_started" not in kinds:
        return f"{batch_id}: a batch begins with a batch_started event"
    scrap = [e["step"] for e in events if e["event"] == "scrapped"]
    expected = route[: route.index(scrap[0]) + 1] if scrap else route
    done_steps = [e["step"] for e in events if e["event"] == "step_completed"]
    if set(done_steps) != set(expected):
        white = " (white chocolate has no cocoa mass: no roasting, no grinding)"
        return (
            f"{batch_id} ({recipe}) must complete the steps {list(expected)}"
            f"{white if recipe == 'white' else ''}"
            f"{' up to where it was scrapped' if scrap else ''}; its step_completed events were "
            f"for {done_steps}."
        )
    produced = _lots(events, "step_completed", "outputs")
    for event in events:
        if event["event"] == "step_started" and event["step"] != expected[0]:
            inputs = [lot["lot"] for lot in event["inputs"]]
            if not set(inputs) & produced:
                return (
                    f"{batch_id}: step_started at {event['step']} (attempt {event['attempt']}) "
                    f"must consume a lot an earlier step of the batch produced, or the trace "
                    f"breaks there; its inputs were {inputs}."
                )
    reached_qc = [s for s in QC_STEPS if s in done_steps]
    if not set(reached_qc) <= checked:
        return (
            f"{batch_id}: every QC point the batch reached ({reached_qc}) must publish a quality "
            f"result; results came from {sorted(checked)}."
        )
    if not scrap:
        shipped = _lots(events, "shipped", "shipment")
        last_attempt = last_packaging_outputs(events)
        if not last_attempt <= shipped:
            packed = _lots(events, "step_completed", "outputs", "s8_packaging")
            return (
                f"{batch_id}: every finished lot must leave in a shipment (a 'shipped' event) so "
                f"a recall can find it; not shipped: {sorted(last_attempt - shipped)} "
                f"(packed: {sorted(packed)})."
            )
    return None


def dead_letter_problem(run: DeadLetter, what: str) -> str | None:
    """What is wrong with how the data center kept the malformed payload of ``run``, or None.

    ``what`` says what is wrong with the payload ("is not JSON").
    """
    letters, payload, topic = run.letters(), run.payload, run.topic
    if not run.datacenter.is_running():
        return run.datacenter.describe_failure(
            f"died after a payload that {what} arrived on {topic}: a data center must never "
            "crash on a payload (the broker would hand it back at every restart); store it in "
            "dead_letters with the reason and go on"
        )
    if not run.stored_good():
        return run.datacenter.describe_failure(
            f"did not store the valid record that followed a payload that {what} on {topic} "
            f"({run.database.describe()})"
        )
    if letters and not any(p == payload for _, p, _r in letters):
        return (
            f"dead_letters has a row for {topic} (reason {letters[0][2]!r}), but its payload "
            f"column is not the payload that arrived: it holds {letters[0][1][:40]!r}, the "
            f"broker delivered {payload[:40]!r}. Store the original bytes as received (a BLOB: "
            "sqlite3.Binary(msg.payload)), never a decoded or re-encoded copy (errors='replace' "
            "changes a non-UTF-8 payload), so someone can replay it once the sender is fixed."
        )
    if not any(p == payload and r for _, p, r in letters):
        return (
            f"A payload that {what} must not be dropped silently: it belongs in dead_letters with "
            f"the reason, so someone can fix the sender and replay it. dead_letters holds "
            f"{len(letters)} row(s) for {topic}: {[(p[:40], r) for _, p, r in letters]}."
        )
    if run.kept_as_record():
        return (
            f"A payload that {what} must not be stored in mqtt_messages as if it were a record: "
            "the traceability tables would trust it."
        )
    return None


def policy_break(
    messages: list[ReceivedMessage], message_type: str, qos: int, retained: bool, root: str
) -> str | None:
    """What breaks the line's policy for ``message_type`` (publish at ``qos``, retain only
    when ``retained``, every payload valid against its schema) in ``messages``, or None."""
    wrong_qos = [m for m in messages if m.qos != qos]
    if wrong_qos:
        return (
            f"{message_type} must be published at QoS {qos} (telemetry 0; state, alarm, quality "
            f"and batch 1: every record must arrive at least once, a reading need not). "
            f"{len(wrong_qos)} of {len(messages)} came at QoS "
            f"{sorted(Counter(m.qos for m in wrong_qos))}, e.g. {wrong_qos[0].topic}."
        )
    wrong_retain = [m for m in messages if m.retain != retained]
    if wrong_retain:
        return (
            f"Only state is retained (the broker keeps the last one for late dashboards); "
            f"{message_type} must be published with retain={int(retained)}, but "
            f"{len(wrong_retain)} of {len(messages)} had retain={int(not retained)}, e.g. "
            f"{wrong_retain[0].topic}."
        )
    invalid = [(m.topic, r) for m in messages if isinstance(r := valid_or_reason(m, root), str)]
    if invalid:
        return (
            f"{len(invalid)} {message_type} payload(s) break their JSON Schema "
            f"(schemas/chocolate_*.schema.json), e.g. {invalid[0][0]}: {invalid[0][1]}"
        )
    return None


def duplicate_problem(run: KilledDatacenter) -> str | None:
    """Which msg_ids the crash and restart of ``run`` left stored more than once, or None."""
    doubled = sorted(i for i, n in run.stored.items() if n > 1)
    states = run.states()
    records = [i for i in doubled if i not in states]
    if records:
        return (
            f"After the restart the broker sent again what was never acknowledged, some of it "
            f"already committed: {len(records)} record(s) are now stored twice, e.g. "
            f"{records[:3]}. At least once means sometimes twice: store each msg_id once (an "
            "idempotency key: a UNIQUE column, INSERT OR IGNORE)."
        )
    resent_states = [i for i in doubled if i in states]
    if resent_states:
        return (
            f"{len(resent_states)} machine state(s) are stored twice, e.g. {resent_states[:3]}: "
            "these are retained states, which the broker hands again to every new subscription "
            "(your data center subscribed again when it restarted), not unacknowledged records. "
            "The same message is the same msg_id: store each msg_id once (an idempotency key: a "
            "UNIQUE column, INSERT OR IGNORE), whatever brought it twice."
        )
    return None
