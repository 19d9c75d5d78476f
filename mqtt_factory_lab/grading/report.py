"""The grader's outputs: ``gradebook.csv`` and a report per student in Markdown and HTML.

``gradebook.csv``: one row per student; one column per lesson (``lesson 03``…, ``extra`` for
hidden experiments outside the lessons) with the points earned, then ``total``, ``max`` and
``problem`` (a broken manifest, a lesson stopped at its time limit, programs left running).

A report shows, per lesson, experiments passed and points, then every mistake once: its
teaching message first (where it failed last), the other experiments that failed the same
way, what the student's programs printed and the broker's trimmed log, as the terminal
shows them.
"""

from __future__ import annotations

import csv
import html
import json
import re
from pathlib import Path

from mqtt_factory_lab.core.mistakes import SAME_AS, group, names_in_short
from mqtt_factory_lab.grading.grader import lesson_columns
from mqtt_factory_lab.grading.points import Experiment, lesson_key
from mqtt_factory_lab.grading.submission import SubmissionResult

#: lines of a program's output a report shows per failure
OUTPUT_LINES = 40


def _num(value: float) -> str:
    return f"{round(value, 2):g}"


def write_gradebook(results: list[SubmissionResult], path: Path) -> list[str]:
    """Write ``gradebook.csv``; return its columns."""
    columns = lesson_columns(results)
    header = [
        "student",
        *(f"lesson {c}" if c != "extra" else "extra" for c in columns),
        "total",
        "max",
        "problem",
    ]
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        for result in sorted(results, key=lambda r: r.student):
            lessons = result.lessons
            writer.writerow(
                [
                    result.student,
                    *(_num(lessons.get(c, {}).get("points", 0)) for c in columns),
                    _num(result.score),
                    _num(result.max_score),
                    result.problem,
                ]
            )
    return header


def read_runs(folders: list[Path]) -> list[SubmissionResult]:
    """Every ``runs/*.json`` of several grader outputs (the shards of one class)."""
    found: dict[str, SubmissionResult] = {}
    for folder in folders:
        for path in sorted((folder / "runs").glob("*.json")):
            result = SubmissionResult.from_dict(json.loads(path.read_text()))
            found[result.student] = result
    return [found[k] for k in sorted(found)]


def _failures(result: SubmissionResult) -> list[Experiment]:
    return [e for e in result.experiments if e.outcome not in ("passed", "skipped")]


def _grouped(result: SubmissionResult) -> list[tuple[Experiment, list[Experiment]]]:
    """Each mistake once: its first failure and the others that fail the same way."""
    failures = _failures(result)
    by_name = {e.nodeid: e for e in failures}
    groups = group((e.nodeid, e.message) for e in failures)
    return [(by_name[g.first], [by_name[n] for n in g.names[1:]]) for g in groups]


#: "labs/04_lwt.py:547: MQTTTimeout": where the check failed, not what it teaches
_WHERE = re.compile(r"^\S+:\d+: \w+$")


def _message(exp: Experiment) -> str:
    """The teaching message first; where it failed last; no pointer to the terminal's report."""
    lines = [line for line in exp.message.strip().splitlines() if not line.startswith(SAME_AS)]
    if lines and _WHERE.match(lines[0]):
        where, lines = lines[0], lines[1:]
        lines.append(f"({where})")
    return "\n".join(lines).strip() or "(no message)"


def _label(name: str) -> str:
    if name.startswith("broker "):
        return f"What the broker logged during the experiment ({name.removeprefix('broker ')})"
    return f"What `{name}` printed"


def _same(others: list[Experiment]) -> str:
    names = [e.name for e in others]
    lost = sum(e.max_points for e in others)
    return (
        f"The same mistake in {len(others)} more experiments ({_num(lost)} points): "
        f"{names_in_short(names, 8)}"
    )


def _output(text: str) -> str:
    lines = text.rstrip().splitlines()
    if len(lines) > OUTPUT_LINES:
        return f"(last {OUTPUT_LINES} of {len(lines)} lines)\n" + "\n".join(lines[-OUTPUT_LINES:])
    return "\n".join(lines) or "(no output)"


def markdown(result: SubmissionResult) -> str:
    """A student's report in Markdown."""
    out = [
        f"# {result.student}: {_num(result.score)} of {_num(result.max_score)} points",
        "",
    ]
    if result.isolation:
        out += [f"*Graded with {result.isolation}.*", ""]
    if result.problem:
        out += [f"**Problem:** {result.problem}", ""]
    out += ["| lesson | concept | experiments passed | points |", "|---|---|---|---|"]
    for key, entry in result.lessons.items():
        out.append(
            f"| {key} | {entry['concept']} | {entry['passed']} of {entry['total']} | "
            f"{_num(entry['points'])} of {_num(entry['max_points'])} |"
        )
    failures = _grouped(result)
    if failures:
        out += ["", "## What failed", ""]
    for exp, others in failures:
        out += [
            f"### lesson {lesson_key(exp.lesson)}: `{exp.name}` "
            f"(0 of {_num(exp.max_points)} points, {exp.outcome})",
            "",
            "```text",
            _message(exp),
            "```",
            "",
        ]
        if others:
            out += [_same(others), ""]
        for program, printed in exp.output.items():
            out += [f"{_label(program)}:", "", "```text", _output(printed), "```", ""]
    if not failures:
        out += ["", "Every experiment passed."]
    return "\n".join(out).rstrip() + "\n"


def html_report(result: SubmissionResult) -> str:
    """A student's report as a self-contained HTML page."""
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(key)}</td><td>{esc(entry['concept'])}</td>"
        f"<td>{entry['passed']} of {entry['total']}</td>"
        f"<td>{_num(entry['points'])} of {_num(entry['max_points'])}</td></tr>"
        for key, entry in result.lessons.items()
    )
    failures = []
    for exp, others in _grouped(result):
        outputs = "".join(
            f"<p>{esc(_label(program)).replace('`', '')}:</p><pre>{esc(_output(printed))}</pre>"
            for program, printed in exp.output.items()
        )
        same = f"<p class='same'>{esc(_same(others))}</p>" if others else ""
        failures.append(
            f"<section class='failure'><h3>lesson {esc(lesson_key(exp.lesson))}: "
            f"<code>{esc(exp.name)}</code> (0 of {_num(exp.max_points)} points, "
            f"{esc(exp.outcome)})</h3><pre>{esc(_message(exp))}</pre>{same}{outputs}</section>"
        )
    problem = (
        f"<p class='problem'><b>Problem:</b> {esc(result.problem)}</p>" if result.problem else ""
    )
    if result.isolation:
        problem = f"<p class='isolation'>Graded with {esc(result.isolation)}.</p>{problem}"
    body = "".join(failures) or "<p>Every experiment passed.</p>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{esc(result.student)}: {_num(result.score)} of {_num(result.max_score)} points</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: .3rem .6rem; }}
pre {{ background: #f6f6f6; padding: .6rem; overflow-x: auto; white-space: pre-wrap; }}
.failure h3 {{ color: #a00; font-size: 1rem; }} .problem {{ color: #a00; }}
</style></head><body>
<h1>{esc(result.student)}: {_num(result.score)} of {_num(result.max_score)} points</h1>
{problem}
<table><tr><th>lesson</th><th>concept</th><th>experiments passed</th><th>points</th></tr>{rows}</table>
<h2>What failed</h2>
{body}
</body></html>
"""


def index_page(results: list[SubmissionResult]) -> str:
    """``index.html``: the gradebook as a page, each student linking to their report."""
    esc = html.escape
    columns = lesson_columns(results)
    head = "".join(f"<th>{esc(c)}</th>" for c in ("student", *columns, "total", "problem"))
    rows = []
    for result in sorted(results, key=lambda r: r.student):
        lessons = result.lessons
        cells = "".join(
            f"<td>{_num(lessons.get(c, {}).get('points', 0))}"
            f" / {_num(lessons.get(c, {}).get('max_points', 0))}</td>"
            for c in columns
        )
        rows.append(
            f"<tr><td><a href='reports/{esc(result.student)}.html'>{esc(result.student)}</a></td>"
            f"{cells}<td>{_num(result.score)} / {_num(result.max_score)}</td>"
            f"<td>{esc(result.problem)}</td></tr>"
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>gradebook</title>
<style>body {{ font-family: system-ui, sans-serif; margin: 2rem; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: .3rem .6rem; }}
</style></head><body><h1>gradebook ({len(results)} submissions)</h1>
<table><tr>{head}</tr>{"".join(rows)}</table></body></html>
"""


def write_reports(results: list[SubmissionResult], out: Path) -> None:
    """``gradebook.csv``, ``index.html`` and ``reports/<student>.md`` / ``.html``."""
    reports = out / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    for result in results:
        (reports / f"{result.student}.md").write_text(markdown(result))
        (reports / f"{result.student}.html").write_text(html_report(result))
    write_gradebook(results, out / "gradebook.csv")
    (out / "index.html").write_text(index_page(results))
