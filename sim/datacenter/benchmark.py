"""Time the reference data center's traces on a generated database; print figures as JSON.

Run by the chocolate benchmark (``python -m mqtt_factory_lab.bench --chocolate``) as a
program, so that the lab's package never imports ``sim``::

    python -m sim.datacenter.benchmark --batches 2000 --db /tmp/trace.db

A database of ``--batches`` batches is generated through :class:`~sim.datacenter.storage.Store`
(validation included), then backward traces of random finished lots and forward traces of
random raw lots are timed.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

from sim.chocolate.line import LineCore
from sim.chocolate.plant import ChocolateTopics
from sim.datacenter.storage import Incoming, Store, ingest_all
from sim.datacenter.trace import Traceability


def trace_times(batches: int, db: Path, samples: int = 30) -> dict[str, float]:
    """Generate a database of ``batches`` batches, then time backward and forward traces."""
    core = LineCore(ChocolateTopics(), seed=1, run_id="bench")
    started = time.monotonic()
    store = Store(db)
    result = ingest_all(
        store,
        (Incoming(m.topic, m.encode(), m.qos, m.retain, time.time()) for m in core.run(batches)),
        chunk=5000,
    )
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    load_seconds = time.monotonic() - started
    rng = random.Random(1)
    with Traceability(db) as trace:
        finished = [r[0] for r in trace.db.execute("SELECT lot FROM lots WHERE lot LIKE 'FG-%'")]
        raw = [r[0] for r in trace.db.execute("SELECT lot FROM lots WHERE batch_id IS NULL")]
        counts = {
            t: trace.db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("mqtt_messages", "batches", "lots")
        }
        backward, forward = [], []
        for lot in rng.sample(finished, min(samples, len(finished))):
            t0 = time.perf_counter()
            trace.backward(lot)
            backward.append(time.perf_counter() - t0)
        for lot in rng.sample(raw, min(samples, len(raw))):
            t0 = time.perf_counter()
            trace.forward(lot)
            forward.append(time.perf_counter() - t0)
    return {
        **counts,
        "stored": result.stored,
        "load_seconds": load_seconds,
        "size_mb": db.stat().st_size / 1e6,
        "backward_median_ms": statistics.median(backward) * 1000,
        "backward_max_ms": max(backward) * 1000,
        "forward_median_ms": statistics.median(forward) * 1000,
        "forward_max_ms": max(forward) * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sim.datacenter.benchmark", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--batches", type=int, required=True)
    parser.add_argument("--db", type=Path, required=True, help="the database to generate")
    parser.add_argument("--samples", type=int, default=30)
    args = parser.parse_args(argv)
    print(json.dumps(trace_times(args.batches, args.db, args.samples)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
