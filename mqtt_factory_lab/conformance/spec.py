"""Normative statements: which ones each experiment checks, and what a run made of them.

A broker experiment names the statements of the MQTT specifications it checks::

    @pytest.mark.spec("MQTT-3.3.1-9", mqtt5=["MQTT-3.3.1-12"])
    def test_live_subscribers_get_the_flag_cleared(mqtt_client, protocol): ...

Positional statement ids hold for every protocol the experiment runs with (its ``protocol``
parameter); ``mqtt311=`` and ``mqtt5=`` add ids for one version only (the two
specifications number their statements differently: MQTT 3.1.1's ``MQTT-3.3.1-9`` is
MQTT 5's ``MQTT-3.3.1-12``). An experiment without a ``protocol`` parameter (one that checks
one version, or both itself) names its statements with the keywords only.

:class:`Recorder` collects every experiment's outcome (under xdist too: it reads the
reports the controller receives), and :func:`build_report` turns them into the
conformance report: statements tested, passed, failed and skipped per protocol, the
missing capabilities counted once each, and the failures with their messages.
"""

from __future__ import annotations

import csv
import datetime as _dt
import functools
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mqtt_factory_lab.conformance.capabilities import LACKS

PROTOCOL_KEYWORDS = {"mqtt311": "3.1.1", "mqtt5": "5"}
STATEMENT = re.compile(r"^MQTT-\d+(\.\d+)*-\d+$")
MARKER = (
    "spec(*statements, mqtt311=[...], mqtt5=[...]): the normative statements of the MQTT "
    "specifications this experiment checks (ids like 'MQTT-3.3.1-9'; keywords for one version)"
)

#: what kind of rule an experiment checks, and how the report treats its outcome
RULES = {
    "must": "a normative MUST of the specifications: a failure is the broker's fault",
    "may": "a MAY/SHOULD or implementation choice: the broker's behaviour is reported as an "
    "observation, never failed (the lesson teaches Mosquitto's)",
    "convention": "a convention of the lab (its ACL, its topic tree), not of the specifications",
}
RULE_MARKER = (
    "rule(kind, mqtt311=SECTION, mqtt5=SECTION): what kind of rule this experiment checks: "
    "'must' (the default with spec ids), 'may' (MAY/SHOULD or an implementation choice: "
    "observed, never failed; SECTION like '§3.1.2.4') or 'convention' (the lab's own)"
)

#: the tables of normative statements, one per protocol (mqtt_factory_lab/conformance/statements/)
STATEMENTS_DIR = Path(__file__).resolve().parent / "statements"
STATEMENT_FILES = {"3.1.1": "mqtt-3.1.1.tsv", "5": "mqtt-5.tsv"}


@dataclass(frozen=True)
class Statement:
    """One row of a statement table: a numbered statement, or a MAY/SHOULD sentence (``§…``).

    ``verified`` says what of the OASIS text the row was checked against (``os-B``: the
    standard's Appendix B; ``body §3.1.2.4``: that section); see the tables' header comments.
    """

    id: str
    keyword: str
    binds: str
    client_testable: bool
    gist: str
    verified: str = ""


@functools.cache
def statements(protocol: str) -> dict[str, Statement]:
    """The statement table of MQTT ``protocol`` (``"3.1.1"`` or ``"5"``), by id."""
    path = STATEMENTS_DIR / STATEMENT_FILES[protocol]
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    rows = csv.DictReader(lines, delimiter="\t")
    return {
        row["id"]: Statement(
            row["id"],
            row["keyword"],
            row["binds"],
            row["client_testable"] == "yes",
            row["gist"],
            row.get("verified") or "",
        )
        for row in rows
    }


def testable(protocol: str) -> list[str]:
    """The numbered statements of ``protocol`` a client of the broker can check."""
    return [s.id for s in statements(protocol).values() if s.client_testable and s.id[0] != "§"]


def item_rule(item: pytest.Item) -> tuple[str, dict[str, str]]:
    """``(kind, {protocol: section})`` of an experiment: its ``rule`` mark, else ``must``.

    :raises pytest.UsageError: for an unknown kind, or a section no table lists.
    """
    mark = item.get_closest_marker("rule")
    if mark is None:
        return "must", {}
    kind = mark.args[0] if mark.args else "must"
    if kind not in RULES:
        raise pytest.UsageError(
            f"{item.nodeid}: rule({kind!r}): the kinds are {', '.join(map(repr, RULES))}"
        )
    sections: dict[str, str] = {}
    for keyword, version in PROTOCOL_KEYWORDS.items():
        section = mark.kwargs.get(keyword)
        if section is None:
            continue
        if section not in statements(version):
            raise pytest.UsageError(
                f"{item.nodeid}: rule(..., {keyword}={section!r}): MQTT {version}'s table "
                f"({STATEMENTS_DIR / STATEMENT_FILES[version]}) has no such row"
            )
        sections[version] = section
    return kind, sections


def item_statements(item: pytest.Item) -> dict[str, list[str]]:
    """``{protocol: statement ids}`` of an experiment.

    With a ``protocol`` parameter: that version, with the positional ids and its keyword's.
    Without one (an experiment that checks both versions itself, or one version only): each
    version its keywords name.

    :raises pytest.UsageError: for a malformed id, an unknown keyword, or positional ids on
        an experiment without a ``protocol`` parameter.
    """
    params = getattr(getattr(item, "callspec", None), "params", {})
    protocol = str(params["protocol"]) if "protocol" in params else None
    found: dict[str, list[str]] = {}
    for mark in item.iter_markers("spec"):
        unknown = set(mark.kwargs) - set(PROTOCOL_KEYWORDS)
        if unknown:
            raise pytest.UsageError(
                f"{item.nodeid}: spec() takes mqtt311= and mqtt5=, not {', '.join(sorted(unknown))}"
            )
        if mark.args and protocol is None:
            raise pytest.UsageError(
                f"{item.nodeid}: spec({', '.join(map(repr, mark.args))}) without a protocol "
                "parameter: say which version each id belongs to with mqtt311=[...] / mqtt5=[...]"
            )
        if mark.args:
            found.setdefault(protocol, []).extend(mark.args)
        for keyword, version in PROTOCOL_KEYWORDS.items():
            value = mark.kwargs.get(keyword, ())
            if value and protocol in (None, version):
                found.setdefault(version, []).extend([value] if isinstance(value, str) else value)
    bad = [i for ids in found.values() for i in ids if not STATEMENT.match(i)]
    if bad:
        raise pytest.UsageError(
            f"{item.nodeid}: {', '.join(bad)} is not a statement id like 'MQTT-3.3.1-9'"
        )
    for version, ids in found.items():
        unknown = [i for i in ids if i not in statements(version)]
        if unknown:
            raise pytest.UsageError(
                f"{item.nodeid}: {', '.join(unknown)} is not a numbered statement of MQTT "
                f"{version} (see {STATEMENTS_DIR / STATEMENT_FILES[version]})"
            )
    return {version: list(dict.fromkeys(ids)) for version, ids in found.items()}


def tag_items(items: list[pytest.Item]) -> None:
    """Put each experiment's statements in its ``user_properties`` (``spec`` =
    ``"3.1.1:MQTT-3.3.1-9 5:MQTT-3.3.1-12"``), so that they travel with its reports (xdist
    workers, JUnit XML ``<properties>``); ``mqtt_protocol`` names its protocol parameter."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "protocol" in params:
            item.user_properties.append(("mqtt_protocol", str(params["protocol"])))
        found = item_statements(item)
        if found:
            tags = " ".join(f"{v}:{i}" for v, ids in found.items() for i in ids)
            item.user_properties.append(("spec", tags))
        kind, sections = item_rule(item)
        if item.get_closest_marker("broker") is None and item.get_closest_marker("rule") is None:
            continue  # a solution experiment grades a program: no kind of MQTT rule to tell
        item.user_properties.append(("rule", kind))
        if sections:
            item.user_properties.append(
                ("rule_section", " ".join(f"{v}:{s}" for v, s in sections.items()))
            )


def parse_tags(text: str) -> dict[str, list[str]]:
    """The ``spec`` user property back into ``{protocol: ids}``."""
    found: dict[str, list[str]] = {}
    for tag in text.split():
        version, _, statement = tag.rpartition(":")
        found.setdefault(version, []).append(statement)
    return found


@dataclass
class Result:
    """One experiment's outcome."""

    nodeid: str
    outcome: str = "passed"
    protocol: str | None = None
    statements: dict[str, list[str]] = field(default_factory=dict)
    kinds: list[str] = field(default_factory=list)
    message: str = ""
    duration: float = 0.0
    rule: str = "must"
    sections: dict[str, list[str]] = field(default_factory=dict)
    observations: list[str] = field(default_factory=list)


def _first_lines(text: str, n: int = 6) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return "\n".join(lines[:n])


class Recorder:
    """A pytest plugin object that keeps each experiment's outcome (register it once)."""

    def __init__(self) -> None:
        self.results: dict[str, Result] = {}
        self.started = _dt.datetime.now(_dt.UTC)

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        kinds = [k for k in ("broker", "solution") if k in report.keywords]
        if not kinds:
            return
        props = dict(report.user_properties)
        result = self.results.setdefault(
            report.nodeid,
            Result(
                report.nodeid,
                protocol=props.get("mqtt_protocol"),
                statements=parse_tags(str(props.get("spec", ""))),
                kinds=kinds,
                rule=str(props.get("rule", "must")),
                sections=parse_tags(str(props.get("rule_section", ""))),
            ),
        )
        result.duration += report.duration
        for name, value in report.user_properties:
            if name == "observed" and value not in result.observations:
                result.observations.append(str(value))
        if report.skipped:
            result.outcome = "skipped"
            longrepr = report.longrepr
            reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
            result.message = reason.removeprefix("Skipped: ")
        elif report.failed:
            result.outcome = "failed" if report.when == "call" else "error"
            result.message = _first_lines(str(report.longrepr))

    def findings(self) -> list[dict[str, Any]]:
        """Each missing capability once, with how many experiments it skipped."""
        counts = Counter(
            r.message
            for r in self.results.values()
            if r.outcome == "skipped" and r.message.startswith(LACKS)
        )
        return [{"finding": reason, "skipped": n} for reason, n in counts.most_common()]


def statement_table(results: list[Result]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{protocol: {statement: {"status", "passed", "failed", "skipped", "experiments"}}}``.

    A statement failed when any of its experiments failed, passed when none failed and one
    passed, and was skipped when every experiment was.
    """
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for result in results:
        if result.rule != "must":
            continue  # a MAY is observed, a lab convention is the lab's: neither judges a MUST
        for protocol, statements in result.statements.items():
            for statement in statements:
                row = table.setdefault(protocol, {}).setdefault(
                    statement, {"passed": 0, "failed": 0, "skipped": 0, "experiments": []}
                )
                bucket = "failed" if result.outcome in ("failed", "error") else result.outcome
                row[bucket] += 1
                row["experiments"].append(result.nodeid)
    for rows in table.values():
        for row in rows.values():
            row["status"] = "failed" if row["failed"] else "passed" if row["passed"] else "skipped"
    return {
        p: dict(sorted(rows.items(), key=_statement_order)) for p, rows in sorted(table.items())
    }


def _statement_order(entry: tuple[str, Any]) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", entry[0])]


def coverage(table: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, int]]:
    """Per protocol: how many of its client-testable statements the run checked (passed or
    failed), of how many the table lists (``{"checked", "of", "skipped"}``)."""
    found: dict[str, dict[str, int]] = {}
    for protocol in STATEMENT_FILES:
        rows = table.get(protocol, {})
        wanted = set(testable(protocol))
        found[protocol] = {
            "checked": sum(1 for i, r in rows.items() if i in wanted and r["status"] != "skipped"),
            "of": len(wanted),
            "skipped": sum(1 for i, r in rows.items() if i in wanted and r["status"] == "skipped"),
        }
    return found


def coverage_line(protocol: str, row: dict[str, int]) -> str:
    """``MQTT 5: 31 of 178 client-testable statements checked (2 more skipped)``."""
    more = f" ({row['skipped']} more skipped)" if row["skipped"] else ""
    return (
        f"MQTT {protocol}: {row['checked']} of {row['of']} client-testable statements checked{more}"
    )


def build_report(
    recorder: Recorder,
    *,
    broker: str,
    capabilities: dict[str, Any] | None,
    command: list[str],
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """The conformance report as JSON-ready data (see :func:`render_markdown`)."""
    results = sorted(recorder.results.values(), key=lambda r: r.nodeid)
    statements = statement_table(results)
    totals = Counter(r.outcome for r in results)
    by_rule = {kind: dict(Counter(r.outcome for r in results if r.rule == kind)) for kind in RULES}
    return {
        "format": "mqtt-factory-lab conformance report 2",
        "broker": broker,
        "notes": notes or [],
        "rules": by_rule,
        "coverage": coverage(statements),
        "started": recorder.started.isoformat(timespec="seconds"),
        "seconds": round((_dt.datetime.now(_dt.UTC) - recorder.started).total_seconds(), 2),
        "command": command,
        "capabilities": capabilities,
        "totals": {o: totals.get(o, 0) for o in ("passed", "failed", "error", "skipped")},
        "findings": recorder.findings(),
        "statements": statements,
        "statement_totals": {
            protocol: {
                "tested": len(rows),
                **{
                    s: sum(1 for r in rows.values() if r["status"] == s)
                    for s in ("passed", "failed", "skipped")
                },
            }
            for protocol, rows in statements.items()
        },
        "experiments": [
            {
                "nodeid": r.nodeid,
                "outcome": r.outcome,
                "protocol": r.protocol,
                "statements": r.statements,
                "rule": r.rule,
                "sections": r.sections,
                "observations": r.observations,
                "message": r.message,
                "seconds": round(r.duration, 3),
            }
            for r in results
        ],
    }


def render_markdown(report: dict[str, Any]) -> str:
    """The report for people: capabilities, findings, statements per protocol, failures."""
    out = [f"# MQTT conformance report: {report['broker']}", ""]
    out += [f"> {_cell(note)}" for note in report.get("notes", [])]
    if report.get("notes"):
        out.append("")
    totals = report["totals"]
    out.append(
        f"{sum(totals.values())} experiments in {report['seconds']} s: "
        + ", ".join(f"{n} {o}" for o, n in totals.items() if n)
        + f" (started {report['started']}; `{' '.join(report['command'])}`)"
    )
    caps = report.get("capabilities")
    if caps:
        out += ["", "## Capabilities", "", "| capability | present | evidence |", "|---|---|---|"]
        for name, c in caps["capabilities"].items():
            out.append(f"| {name} | {'yes' if c['present'] else '**no**'} | {_cell(c['detail'])} |")
        if caps.get("connack5"):
            shown = ", ".join(f"{k}={v}" for k, v in sorted(caps["connack5"].items()))
            out.append(f"| MQTT 5 CONNACK | | {_cell(shown)} |")
    out += ["", "## Findings", ""]
    if report["findings"]:
        out += [
            f"- {_cell(f['finding'])} ({f['skipped']} experiments skipped)"
            for f in report["findings"]
        ]
    else:
        out.append("- none: nothing was skipped for a missing capability")
    out += ["", "## Coverage", ""]
    out += [f"- {coverage_line(p, row)}" for p, row in report.get("coverage", {}).items()]
    rules = report.get("rules", {})
    out += [
        "",
        "## Experiments by kind of rule",
        "",
        "| kind | what it means | passed | failed | skipped |",
        "|---|---|---|---|---|",
    ]
    for kind, meaning in RULES.items():
        t = rules.get(kind, {})
        failed = t.get("failed", 0) + t.get("error", 0)
        out.append(
            f"| {kind.upper() if kind != 'convention' else 'lab convention'} | {meaning} | "
            f"{t.get('passed', 0)} | {failed} | {t.get('skipped', 0)} |"
        )
    out += [
        "",
        "## Statements",
        "",
        "| protocol | tested | passed | failed | skipped |",
        "|---|---|---|---|---|",
    ]
    for protocol, t in report["statement_totals"].items():
        out.append(
            f"| MQTT {protocol} | {t['tested']} | {t['passed']} | {t['failed']} | {t['skipped']} |"
        )
    for protocol, rows in report["statements"].items():
        out += [
            "",
            f"### MQTT {protocol}",
            "",
            "| statement | status | experiments (passed/failed/skipped) |",
            "|---|---|---|",
        ]
        for statement, row in rows.items():
            status = row["status"] if row["status"] != "failed" else "**failed**"
            out.append(
                f"| {statement} | {status} | {row['passed']}/{row['failed']}/{row['skipped']} |"
            )
    observed = [e for e in report["experiments"] if e.get("rule") == "may"]
    if observed:
        out += [
            "",
            "## Behaviours (MAY, SHOULD or implementation choice: observed, not judged)",
            "",
        ]
        for e in observed:
            section = ", ".join(f"MQTT {p} {' '.join(s)}" for p, s in e.get("sections", {}).items())
            what = "; ".join(e.get("observations", [])) or (
                e["message"] if e["outcome"] != "passed" else "nothing recorded"
            )
            where = f" ({section})" if section else ""
            out.append(f"- `{e['nodeid']}`{where}: the broker behaves this way: {_cell(what)}")
    failures = [e for e in report["experiments"] if e["outcome"] in ("failed", "error")]
    must = [e for e in failures if e.get("rule", "must") == "must"]
    others = [e for e in failures if e.get("rule", "must") != "must"]
    if must:
        out += ["", "## Failures: MUSTs the broker broke", ""]
        for e in must:
            named = ", ".join(i for ids in e["statements"].values() for i in ids)
            out += [f"### `{e['nodeid']}`", "", f"statements: {named or 'none named'}", ""]
            out += ["```", e["message"], "```", ""]
    if others:
        out += ["", "## Failures of lab conventions and observations", ""]
        for e in others:
            out += [f"### `{e['nodeid']}` ({e.get('rule')})", "", "```", e["message"], "```", ""]
    untagged = [e["nodeid"] for e in report["experiments"] if not e["statements"]]
    if untagged:
        out += ["", "## Experiments that name no statement", ""]
        out += [f"- `{n}`" for n in untagged]
    return "\n".join(out).rstrip() + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_comparison(left: dict[str, Any], right: dict[str, Any]) -> str:
    """Two reports side by side (two brokers, or two releases of one): Markdown."""
    a, b = left["broker"], right["broker"]
    out = [
        "# MQTT conformance: side by side",
        "",
        f"- A: {a} ({left['started']})",
        f"- B: {b} ({right['started']})",
        "",
    ]
    ca = (left.get("capabilities") or {}).get("capabilities", {})
    cb = (right.get("capabilities") or {}).get("capabilities", {})
    if ca or cb:
        out += ["## Capabilities", "", "| capability | A | B |", "|---|---|---|"]
        for name in dict.fromkeys([*ca, *cb]):

            def show(c: dict[str, Any] | None) -> str:
                return "-" if c is None else ("yes" if c["present"] else "**no**")

            mark = " ≠" if show(ca.get(name)) != show(cb.get(name)) else ""
            out.append(f"| {name}{mark} | {show(ca.get(name))} | {show(cb.get(name))} |")
        out.append("")
    out += ["## Statements", "", "| protocol | statement | A | B |", "|---|---|---|---|"]
    protocols = dict.fromkeys([*left["statements"], *right["statements"]])
    for protocol in protocols:
        ra, rb = left["statements"].get(protocol, {}), right["statements"].get(protocol, {})
        for statement in sorted(dict.fromkeys([*ra, *rb]), key=lambda s: _statement_order((s, 0))):
            sa = ra.get(statement, {}).get("status", "-")
            sb = rb.get(statement, {}).get("status", "-")
            mark = " ≠" if sa != sb else ""
            out.append(f"| MQTT {protocol} | {statement}{mark} | {sa} | {sb} |")
    ea = {e["nodeid"]: e["outcome"] for e in left["experiments"]}
    eb = {e["nodeid"]: e["outcome"] for e in right["experiments"]}
    differ = [n for n in dict.fromkeys([*ea, *eb]) if ea.get(n) != eb.get(n)]
    out += ["", f"## Experiments with different outcomes ({len(differ)})", ""]
    if differ:
        out += ["| experiment | A | B |", "|---|---|---|"]
        out += [f"| `{n}` | {ea.get(n, '-')} | {eb.get(n, '-')} |" for n in differ]
    else:
        out.append("none")
    return "\n".join(out).rstrip() + "\n"
