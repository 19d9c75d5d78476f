"""``mqtt-lab``: the lab's command line. One subcommand per job (argparse subparsers).

``mqtt-lab grade SUBMISSIONS_DIR --out DIR``   grade a class (see docs/grading.md)
``mqtt-lab merge OUT_DIR... --out DIR``        one gradebook from the outputs of several shards
``mqtt-lab conformance ...``                   the broker experiments as a conformance report
                                               (:mod:`mqtt_factory_lab.conformance`)
``mqtt-lab sandbox up|status|logs|fault|down`` the whole factory on this machine
                                               (:mod:`mqtt_factory_lab.sandbox`)
``mqtt-lab lint-topics ...``                   topics against the seeds' conventions
                                               (:mod:`mqtt_factory_lab.lint_topics`)

Another subcommand is one more ``add_parser`` in :func:`build_parser` and a function.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from mqtt_factory_lab.brokers import BACKENDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mqtt-lab", description="The MQTT factory lab's command line."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    grade = commands.add_parser(
        "grade",
        help="grade every submission folder of a class",
        description="Grade every folder of SUBMISSIONS_DIR (one per student, each with a "
        "solution.toml) against the lab's lessons, each in isolation, several at once. "
        "Writes DIR/gradebook.csv, DIR/reports/<student>.html and .md, DIR/runs/<student>.json. "
        "A second run re-grades only the submissions that changed.",
    )
    grade.add_argument("submissions", type=Path, metavar="SUBMISSIONS_DIR")
    grade.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    grade.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=None,
        help="submissions graded at once (default: three per core, as memory allows: "
        "the lessons wait more than they compute)",
    )
    grade.add_argument(
        "--lessons",
        metavar="NN,NN",
        help="the lessons the assignment covers, such as 01,03 (default: every labs/NN_*.py)",
    )
    grade.add_argument(
        "-m",
        "--select",
        default="solution",
        metavar="EXPR",
        help="pytest marker expression choosing the lessons' experiments (default: solution = "
        "the student's programs; 'solution or broker' adds the broker's rules)",
    )
    grade.add_argument(
        "--extra-tests",
        type=Path,
        metavar="DIR",
        help="hidden experiments: every *.py in DIR runs against each submission too "
        "(points with @pytest.mark.points(n), lesson with @pytest.mark.lesson(n))",
    )
    grade.add_argument("--shard", metavar="I/N", help="grade only part I of N of the class")
    grade.add_argument(
        "--lesson-timeout",
        type=float,
        default=180.0,
        metavar="S",
        help="seconds a lesson may take per submission before it is stopped (default 180)",
    )
    grade.add_argument(
        "--submission-timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="seconds a whole submission may take before it is stopped, the lessons it did "
        "not get to scored 0 (default 600; 0: only the lessons' limits)",
    )
    grade.add_argument(
        "--test-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds one experiment may take (pytest-timeout; default 60)",
    )
    grade.add_argument(
        "--cpu-seconds",
        type=int,
        default=60,
        metavar="S",
        help="CPU seconds each student program may use (default 60)",
    )
    grade.add_argument(
        "--role-cpu-seconds",
        action="append",
        default=[],
        metavar="ROLE=S",
        help="CPU seconds for one role, such as controller=120 (repeatable)",
    )
    grade.add_argument(
        "--memory-mb", type=int, default=1024, help="address space per program, MiB (default 1024)"
    )
    grade.add_argument(
        "--file-mb",
        type=int,
        default=20,
        help="largest file a program may write, its output included, MiB (default 20)",
    )
    grade.add_argument(
        "--processes",
        type=int,
        default=256,
        help="processes and threads a submission's programs may have (as root; default 256)",
    )
    grade.add_argument(
        "--run-as-uid",
        type=int,
        default=None,
        metavar="UID",
        help="as root, the first of the -j user ids student programs run as (default 64200); "
        "'--no-drop-privileges' keeps root",
    )
    grade.add_argument(
        "--no-drop-privileges",
        action="store_true",
        help="as root, run student programs as root too (not recommended)",
    )
    grade.add_argument(
        "--broker-backend",
        choices=BACKENDS,
        default="local",
        help="where each lesson run gets its brokers (default: local mosquitto)",
    )
    grade.add_argument(
        "--share-network",
        action="store_true",
        help="do not give each lesson run a network namespace of its own (as root, the "
        "default isolates: its programs reach only its own brokers)",
    )
    grade.add_argument("--quiet", action="store_true", help="no progress display")
    grade.set_defaults(run=run_grade)

    from mqtt_factory_lab.conformance import run as conformance

    check = commands.add_parser(
        "conformance",
        help="run the lessons' broker experiments against a broker; write a report",
        description="Run the lab's broker experiments against a broker and write a "
        "conformance report (Markdown, JSON, JUnit XML). See docs/conformance.md.",
    )
    conformance.add_arguments(check)
    check.set_defaults(run=lambda args, parser: conformance.run(args))

    merge = commands.add_parser(
        "merge",
        help="one gradebook and reports from the output folders of several shards",
        description="Read DIR/runs/*.json of every OUT_DIR and write one gradebook.csv and the "
        "reports into --out.",
    )
    merge.add_argument("outputs", type=Path, nargs="+", metavar="OUT_DIR")
    merge.add_argument("--out", type=Path, required=True, metavar="DIR")
    merge.set_defaults(run=run_merge)

    from mqtt_factory_lab import lint_topics
    from mqtt_factory_lab.sandbox import command as sandbox

    sandbox.add_parser(commands)
    lint_topics.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.run(args, parser) or 0)


def run_grade(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from mqtt_factory_lab.core.limits import Limits
    from mqtt_factory_lab.grading.grader import ClassGrader
    from mqtt_factory_lab.grading.progress import Progress
    from mqtt_factory_lab.grading.report import write_reports
    from mqtt_factory_lab.grading.settings import (
        UID_BASE,
        GradingError,
        Settings,
        discover_extra_tests,
        discover_lessons,
        discover_submissions,
        shard,
    )

    role_cpu = {}
    for item in args.role_cpu_seconds:
        role, _, seconds = item.partition("=")
        if not role or not seconds.isdigit():
            parser.error(f"--role-cpu-seconds {item!r}: write ROLE=SECONDS, such as controller=120")
        role_cpu[role] = int(seconds)
    try:
        lessons = discover_lessons(args.lessons.split(",") if args.lessons else None)
        extra = discover_extra_tests(args.extra_tests)
        if not lessons and not extra:
            raise GradingError("no lessons to grade (labs/NN_*.py) and no --extra-tests")
        folders = shard(discover_submissions(args.submissions), args.shard)
    except (GradingError, ValueError) as error:
        print(f"mqtt-lab grade: {error}", file=sys.stderr)
        return 2
    settings = Settings(
        lessons=tuple(lessons),
        extra_tests=tuple(extra),
        marker=args.select,
        lesson_timeout=args.lesson_timeout,
        submission_timeout=args.submission_timeout or None,
        test_timeout=args.test_timeout,
        limits=Limits(
            cpu_seconds=args.cpu_seconds,
            role_cpu_seconds=role_cpu,
            memory_mb=args.memory_mb,
            file_mb=args.file_mb,
            processes=args.processes,
        ),
        backend=args.broker_backend,
        run_as_uid_base=None if args.no_drop_privileges else (args.run_as_uid or UID_BASE),
        isolate_network=not args.share_network,
    )
    started = time.monotonic()
    try:
        grader = ClassGrader(settings, args.out, jobs=args.jobs)
    except GradingError as error:
        print(f"mqtt-lab grade: {error}", file=sys.stderr)
        return 2
    if grader.privileges and args.run_as_uid is not None:
        print(f"mqtt-lab grade: {grader.privileges}; or pass --no-drop-privileges", file=sys.stderr)
        grader.close()
        return 2
    for problem, what in (
        (grader.privileges, "student programs run as ROOT and the process limit does not hold"),
        (grader.network, "lesson runs share the machine's network (not isolated)"),
    ):
        if problem:
            print(f"mqtt-lab grade: warning: {what}: {problem}", file=sys.stderr)
    try:
        try:
            grader.collect_plan()
        except GradingError as error:
            print(f"mqtt-lab grade: {error}", file=sys.stderr)
            return 2
        results = grader.grade(folders, None if args.quiet else Progress())
    except KeyboardInterrupt:
        print(
            "\nmqtt-lab grade: interrupted; every program it started was stopped", file=sys.stderr
        )
        return 130
    finally:
        grader.close()
    write_reports(results, args.out)
    seconds = time.monotonic() - started
    print(
        f"graded {len(results)} submissions ({sum(r.reused for r in results)} unchanged) in "
        f"{seconds:.1f} s with -j {grader.jobs}: {args.out / 'gradebook.csv'}, "
        f"{args.out / 'reports'}/",
    )
    return 0


def run_merge(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from mqtt_factory_lab.grading.report import read_runs, write_reports

    results = read_runs(args.outputs)
    if not results:
        print("mqtt-lab merge: no runs/*.json in the folders given", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    write_reports(results, args.out)
    print(f"merged {len(results)} submissions: {args.out / 'gradebook.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
