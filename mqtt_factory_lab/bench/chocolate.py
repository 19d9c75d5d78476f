"""Benchmark of the chocolate data center: ingest rate, trace times, and kill -9 without loss.

Prints figures, never pass/fail::

    python -m mqtt_factory_lab.bench.chocolate                      # all three, local broker
    python -m mqtt_factory_lab.bench.chocolate --only ingest --ingest-batches 400
    python -m mqtt_factory_lab.bench.chocolate --only trace --trace-batches 2000

* **ingest**: the reference line (``sim.chocolate --time-scale 0``) publishes as fast as it
  can; the reference data center (QoS 1 subscription, acknowledgement after commit) and a
  bare paho subscriber that stores nothing receive the same stream side by side. Rates are
  messages per second from the first message to the last one stored (data center) or
  received (bare subscriber), and the ratio of the two; plus the QoS 1 records lost.
* **trace**: a database of ``--trace-batches`` batches (10 000: about a million messages) is
  generated through :class:`sim.datacenter.storage.Store` (validation included), then
  backward traces of random finished lots and forward traces of random raw lots are timed.
* **kill -9**: the data center is killed (SIGKILL) ``--kills`` times while the line runs and
  restarted each time; at the end, records expected (QoS 1 messages seen by an observer),
  stored, lost and duplicated.

The brokers here get ``max_queued_messages 0`` (no limit): with Mosquitto's default of 1000,
a publisher faster than the data center makes the *broker* drop QoS 1 messages for it,
which no subscriber can prevent.
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from mqtt_factory_lab.brokers import Broker, BrokerError, create_broker, resolve_backend
from mqtt_factory_lab.core import process
from mqtt_factory_lab.core.client import RecordingClient
from mqtt_factory_lab.core.factory import program_env
from mqtt_factory_lab.core.paths import LAB_ROOT as ROOT
from mqtt_factory_lab.core.roles import RoleProcess

UNLIMITED_QUEUE = "max_queued_messages 0\n"


class BareSubscriber:
    """A paho subscriber that only counts: the ceiling a data center is compared with."""

    def __init__(self, broker: Broker, topic_filter: str) -> None:
        self.count = 0
        self.first: float | None = None
        self.last: float | None = None
        self.qos1_ids: set[str] = set()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"bench-bare-{uuid.uuid4().hex[:6]}"
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(topic_filter, qos=1)
        if not self._subscribed.wait(10):
            raise RuntimeError("the bare subscriber got no SUBACK")

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        self.first = self.first or now
        self.last = now
        self.count += 1
        if msg.qos == 1:
            self.qos1_ids.add(json.loads(msg.payload)["msg_id"])

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _stored_ids(db: Path) -> Counter[str]:
    """msg_id -> rows in the data center's ``mqtt_messages`` (read-only, never blocks it)."""
    if not db.exists():
        return Counter()
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = connection.execute("SELECT payload FROM mqtt_messages").fetchall()
    except sqlite3.OperationalError:
        return Counter()
    finally:
        connection.close()
    return Counter(json.loads(payload)["msg_id"] for (payload,) in rows)


def _stored_count(db: Path) -> int:
    if not db.exists():
        return 0
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return connection.execute("SELECT count(*) FROM mqtt_messages").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        connection.close()


def _wait(condition: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Whether ``condition`` came true within ``timeout`` seconds (the lab's one polling loop)."""
    try:
        process.wait_until(condition, timeout, interval=interval)
    except process.ProcessTimeout:
        return False
    return True


def _program(name: str, args: list[str], env: dict[str, str]) -> RoleProcess:
    return RoleProcess(name, name, [sys.executable, "-m", *args], env=env, cwd=ROOT)


def _sent_total(line: RoleProcess) -> int:
    """The line's own count of what it published (its summary line)."""
    match = re.search(r"sent (.+)$", line.output(), re.MULTILINE)
    if not match:
        raise RuntimeError(line.describe_failure("printed no summary"))
    return sum(int(part.split()[0]) for part in match.group(1).split(", "))


# -- ingest ----------------------------------------------------------------------------------


def ingest_race(backend: str, batches: int, workdir: Path) -> dict[str, float]:
    """The data center and a bare subscriber on the same full-speed stream."""
    with create_broker(backend, "open", extra_config=UNLIMITED_QUEUE) as broker:
        root = f"bench/{uuid.uuid4().hex[:8]}/factory"
        env = program_env(broker, root)
        db = workdir / "ingest.db"
        datacenter = _program("datacenter", ["sim.datacenter", "--db", str(db)], env)
        bare = BareSubscriber(broker, f"{root}/+/+/+/+/+")
        line = _program(
            "line", ["sim.chocolate", "--batches", str(batches), "--time-scale", "0"], env
        )
        try:
            datacenter.start().wait_for_output(r"^ready ", 20)
            line.start()
            if line.wait_exit(900) != 0:
                raise RuntimeError(line.describe_failure("failed"))
            total = _sent_total(line)
            _wait(lambda: bare.count >= total, 60)
            _wait(lambda: _stored_count(db) >= total, 900, interval=0.005)
            stored_at = time.monotonic()
            assert bare.first is not None and bare.last is not None
            stored = _stored_ids(db)
            bare_rate = bare.count / (bare.last - bare.first)
            dc_rate = sum(stored.values()) / (stored_at - bare.first)
            return {
                "messages": total,
                "bare_received": bare.count,
                "bare_rate": bare_rate,
                "datacenter_stored": sum(stored.values()),
                "datacenter_rate": dc_rate,
                "ratio": dc_rate / bare_rate,
                "qos1_lost": len(bare.qos1_ids - set(stored)),
            }
        finally:
            bare.close()
            line.close()
            datacenter.close()


# -- trace -----------------------------------------------------------------------------------


def trace_times(batches: int, workdir: Path, samples: int = 30) -> dict[str, float]:
    """Generate a database of ``batches`` batches, then time backward and forward traces.

    The work is the reference data center's (``python -m sim.datacenter.benchmark``), run as a
    program in the lab's folder, so that this package never imports ``sim``.
    """
    command = [sys.executable, "-m", "sim.datacenter.benchmark", "--batches", str(batches)]
    command += ["--db", str(workdir / "trace.db"), "--samples", str(samples)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command[1:])} failed ({done.returncode}): {done.stderr[-2000:]}"
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- kill -9 ---------------------------------------------------------------------------------


def kill_run(backend: str, kills: int, workdir: Path) -> dict[str, int]:
    """Kill the data center ``kills`` times during production; count what reached the database."""
    with create_broker(backend, "open", extra_config=UNLIMITED_QUEUE) as broker:
        root = f"bench/{uuid.uuid4().hex[:8]}/factory"
        env = program_env(broker, root)
        db = workdir / "kill.db"
        args = ["sim.datacenter", "--db", str(db), "--client-id", f"dc-{uuid.uuid4().hex[:6]}"]
        observer = RecordingClient(
            broker.host, broker.port, f"bench-observer-{uuid.uuid4().hex[:6]}"
        )
        observer.connect()
        observer.subscribe(f"{root}/+/+/+/+/+", qos=1)
        programs: list[RoleProcess] = []
        line = _program(
            "line",
            ["sim.chocolate", "--batches", str(4 * kills), "--time-scale", "60000"],
            env,
        )
        programs.append(line)
        try:
            datacenter = _program("datacenter", args, env)
            programs.append(datacenter)
            datacenter.start().wait_for_output(r"^ready ", 20)
            line.start()
            done = 0
            while done < kills and line.is_running():
                seen = len(observer.received())
                _wait(lambda seen=seen: len(observer.received()) >= seen + 40, 10)
                datacenter.kill()
                done += 1
                datacenter = _program("datacenter", args, env)
                programs.append(datacenter)
                datacenter.start().wait_for_output(r"^ready ", 20)
            line.wait_exit(600)
            observer.sync()
            expected = {json.loads(m.payload)["msg_id"] for m in observer.received() if m.qos == 1}
            _wait(lambda: expected <= set(_stored_ids(db)), 60, interval=0.1)
            stored = _stored_ids(db)
            return {
                "kills": done,
                "expected": len(expected),
                "stored": len(expected & set(stored)),
                "lost": len(expected - set(stored)),
                "duplicated": sum(n - 1 for n in stored.values() if n > 1),
            }
        finally:
            observer.disconnect()
            for program in reversed(programs):
                program.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mqtt_factory_lab.bench.chocolate", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--backend", default="auto", choices=("auto", "local", "docker"))
    parser.add_argument(
        "--only", action="append", choices=("ingest", "trace", "kill"), help="repeatable"
    )
    parser.add_argument("--ingest-batches", type=int, default=300, help="default 300 (~27k msgs)")
    parser.add_argument(
        "--trace-batches", type=int, default=10000, help="default 10000 (~0.9M messages)"
    )
    parser.add_argument("--kills", type=int, default=20, help="default 20")
    args = parser.parse_args(argv)
    parts = args.only or ["ingest", "trace", "kill"]
    try:
        backend = resolve_backend(args.backend)
    except BrokerError as error:
        print(f"no broker: {error}")
        return 1
    with tempfile.TemporaryDirectory(prefix="bench-choc-") as tmp:
        workdir = Path(tmp)
        if "ingest" in parts:
            r = ingest_race(backend, args.ingest_batches, workdir)
            print(
                f"ingest ({backend}, {r['messages']} messages at full speed): data center "
                f"{r['datacenter_rate']:.0f} msg/s ({r['datacenter_stored']} stored, "
                f"{r['qos1_lost']} QoS 1 lost), bare paho subscriber {r['bare_rate']:.0f} msg/s "
                f"({r['bare_received']} received); ratio {r['ratio']:.2f}"
            )
        if "trace" in parts:
            r = trace_times(args.trace_batches, workdir)
            print(
                f"trace database: {r['mqtt_messages']} messages, {r['batches']} batches, "
                f"{r['lots']} lots, {r['size_mb']:.0f} MB, generated and stored in "
                f"{r['load_seconds']:.0f} s"
            )
            print(
                f"trace times: backward median {r['backward_median_ms']:.1f} ms "
                f"(max {r['backward_max_ms']:.1f}), forward median "
                f"{r['forward_median_ms']:.1f} ms (max {r['forward_max_ms']:.1f})"
            )
        if "kill" in parts:
            r = kill_run(backend, args.kills, workdir)
            print(
                f"kill -9 x{r['kills']} during production: records expected {r['expected']}, "
                f"stored {r['stored']}, lost {r['lost']}, duplicated {r['duplicated']}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
