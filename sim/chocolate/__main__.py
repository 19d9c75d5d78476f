"""``python -m sim.chocolate``: run the chocolate line against the broker.

Example::

    $ python -m sim.chocolate --seed 7 --batches 3 --time-scale 20000
    ready choc-line-a
    done: 3 batches, 4 shipments; sent 99 alarm, ...
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import uuid
from collections.abc import Sequence

from sim.chocolate.line import LineCore
from sim.chocolate.plant import ChocolateTopics
from sim.chocolate.recipes import RECIPES
from sim.chocolate.runner import run_line
from sim.connection import add_arguments
from sim.runtime import add_log_level, broker_settings, setup_logging

LEVEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _level(text: str) -> str:
    if not LEVEL.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} cannot be a topic level: use letters, digits, '_', '.', '-' (no '/', '+', '#')"
        )
    return text


def _recipes(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [n for n in names if n not in RECIPES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown recipe(s) {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(RECIPES)}, comma-separated"
        )
    return names


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sim.chocolate",
        description="Run the 8-step chocolate line (white, milk, dark) on the MQTT broker: "
        "telemetry (QoS 0), retained machine state with a Last Will (QoS 1), alarms, quality "
        "results and batch events (QoS 1) under <root>/<site>/<line>/<step>/<machine>/<type>.",
        epilog="Prints 'ready <client prefix>' once every machine is online, and a summary at "
        "the end; logs go to stderr. SIGTERM or Ctrl-C: machines go offline, exit 0.",
    )
    parser.add_argument("--site", type=_level, default="tunis-01", help="site (default tunis-01)")
    parser.add_argument("--line", type=_level, default="line-a", help="line (default line-a)")
    parser.add_argument(
        "--batches", type=_positive_int, metavar="N", help="stop after N batches (default: never)"
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="same seed, same production (default 1)"
    )
    parser.add_argument(
        "--recipes",
        type=_recipes,
        default=tuple(RECIPES),
        metavar="LIST",
        help="recipes to draw batches from, comma-separated (default dark,milk,white)",
    )
    parser.add_argument(
        "--time-scale",
        type=_non_negative,
        default=600.0,
        metavar="X",
        help="plant seconds per wall second (default 600: a batch of about 11 plant hours "
        "takes about a minute); 0 = as fast as possible",
    )
    parser.add_argument(
        "--batch-kg", type=_positive, default=500.0, help="finished kg per batch (default 500)"
    )
    parser.add_argument(
        "--batch-schema",
        type=int,
        choices=(1, 2),
        default=2,
        help="version of the batch events (default 2; 1 = legacy lots_in/lots_out)",
    )
    parser.add_argument(
        "--client-id",
        type=_level,
        help="prefix of the machines' client ids, and the id on the ready line "
        "(default choc-<line>)",
    )
    parser.add_argument(
        "--run-id",
        type=_level,
        help="makes batch ids, lot codes and msg_ids unique to this run (default: random)",
    )
    add_log_level(parser)
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = broker_settings(parser, args)
    prefix = args.client_id or f"choc-{args.line}"
    setup_logging(f"%(asctime)s %(levelname)s {prefix}: %(message)s", args.log_level)
    logging.getLogger("sim.chocolate").debug("arguments: %s", args)
    topics = ChocolateTopics(settings.topic_root, args.site, args.line)
    core = LineCore(
        topics,
        seed=args.seed,
        run_id=args.run_id or uuid.uuid4().hex[:6],
        recipes=args.recipes,
        batch_kg=args.batch_kg,
        batch_schema=args.batch_schema,
    )
    return run_line(
        core,
        settings,
        client_prefix=prefix,
        time_scale=args.time_scale,
        batches=args.batches,
    )


if __name__ == "__main__":
    sys.exit(main())
