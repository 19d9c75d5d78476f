"""Traceability: where did this lot go, and what went into it? (:class:`Traceability`)

Lots form a graph: a step execution (batch, step, attempt) consumes lots and
produces lots. Both traces are one recursive SQL query over that graph
(``lot_consumption`` joined to ``lots``), each hop an index lookup:

* **backward** from a finished lot: every execution upstream, with machine,
  times and parameters, the alarms that machine raised during the execution,
  the quality results, and the raw lots at the leaves;
* **forward** from any lot (a hazelnut-paste lot from a bad supplier delivery):
  every lot made from it, the finished lots among them and the shipments that
  carried them away: the recall;
* **mass balance** per batch: raw material in = product out + declared losses,
  within a tolerance, else flagged;
* **recall report**: the forward trace as CSV with the key data elements a
  recall notice asks for (lot code, product, quantity and unit, location, date).

Example::

    >>> trace = Traceability("datacenter.db")                    # doctest: +SKIP
    >>> trace.forward("HZP-e8955b-001")["finished_lots"]          # doctest: +SKIP
    ['FG-B-e8955b-0002-1', 'FG-B-e8955b-0002-2']
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sim.datacenter.storage import connect

FINISHED = "finished_chocolate"
RECALL_COLUMNS = (
    "lot_code",
    "product",
    "quantity",
    "unit",
    "location",
    "date",
    "batch_id",
    "shipment_id",
    "status",
)

_UPSTREAM = """
WITH RECURSIVE up(lot) AS (
    SELECT :lot
    UNION
    SELECT c.lot FROM up
    JOIN lots p ON p.lot = up.lot
    JOIN lot_consumption c ON c.batch_id = p.batch_id AND c.step = p.step AND c.attempt = p.attempt
)
"""
_DOWNSTREAM = """
WITH RECURSIVE down(lot) AS (
    SELECT :lot
    UNION
    SELECT p.lot FROM down
    JOIN lot_consumption c ON c.lot = down.lot
    JOIN lots p ON p.batch_id = c.batch_id AND p.step = c.step AND p.attempt = c.attempt
)
"""


class UnknownLot(LookupError):
    """The lot code is in no record of the database."""


def iso(ts: float | None) -> str | None:
    """A Unix time as ISO 8601 UTC (what a recall report shows)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Traceability:
    """Read-only queries over a data center database.

    :param path: the SQLite file the data center writes (it may be writing now: WAL
        lets readers and the writer work at the same time).
    """

    def __init__(self, path: str | Path) -> None:
        if not Path(path).exists():
            raise FileNotFoundError(f"no data center database at {path}")
        self.db = connect(path, readonly=True)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Traceability:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers ----------------------------------------------------------------------
    def _rows(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        return [dict(row) for row in self.db.execute(sql, params)]

    def lot(self, code: str) -> dict[str, Any]:
        row = self.db.execute("SELECT * FROM lots WHERE lot = ?", (code,)).fetchone()
        if row is None:
            raise UnknownLot(
                f"lot {code!r} appears in no batch event of this database: check the code "
                "(lot codes are case-sensitive) and that the data center received the line's "
                "batch events"
            )
        return dict(row)

    # -- backward -----------------------------------------------------------------------
    def backward(self, code: str) -> dict[str, Any]:
        """Everything that went into lot ``code``, step by step."""
        lot = self.lot(code)
        executions = self._rows(
            _UPSTREAM
            + """
            SELECT DISTINCT e.*, b.recipe FROM up
            JOIN lots p ON p.lot = up.lot
            JOIN step_executions e
              ON e.batch_id = p.batch_id AND e.step = p.step AND e.attempt = p.attempt
            JOIN batches b ON b.batch_id = e.batch_id
            ORDER BY e.started_ts, e.step, e.attempt
            """,
            {"lot": code},
        )
        steps = []
        for execution in executions:
            key = (execution["batch_id"], execution["step"], execution["attempt"])
            inputs = self._rows(
                "SELECT c.lot, l.material, c.quantity, l.batch_id AS made_by_batch"
                " FROM lot_consumption c LEFT JOIN lots l ON l.lot = c.lot"
                " WHERE c.batch_id = ? AND c.step = ? AND c.attempt = ? ORDER BY c.lot",
                key,
            )
            outputs = self._rows(
                "SELECT lot, material, quantity FROM lots"
                " WHERE batch_id = ? AND step = ? AND attempt = ? ORDER BY lot",
                key,
            )
            alarms = self._rows(
                "SELECT alarm, state, severity, value, message, ts FROM alarms"
                " WHERE machine = ? AND ts BETWEEN ? AND ? ORDER BY ts",
                (
                    execution["machine"],
                    execution["started_ts"] or 0,
                    execution["completed_ts"] or execution["started_ts"] or 0,
                ),
            )
            quality = self._rows(
                "SELECT check_name, value, unit, low, high, result, action, ts"
                " FROM quality_results WHERE batch_id = ? AND step = ? AND attempt = ?"
                " ORDER BY ts",
                key,
            )
            steps.append(
                {
                    "batch_id": execution["batch_id"],
                    "recipe": execution["recipe"],
                    "step": execution["step"],
                    "attempt": execution["attempt"],
                    "machine": execution["machine"],
                    "started": iso(execution["started_ts"]),
                    "completed": iso(execution["completed_ts"]),
                    "quantity_in": execution["quantity_in"],
                    "quantity_out": execution["quantity_out"],
                    "parameters": json.loads(execution["parameters"] or "{}"),
                    "rework_reason": execution["rework_reason"],
                    "inputs": inputs,
                    "outputs": outputs,
                    "alarms": alarms,
                    "quality": quality,
                }
            )
        raw = [i for s in steps for i in s["inputs"] if i["made_by_batch"] is None]
        return {
            "lot": code,
            "material": lot["material"],
            "quantity": lot["quantity"],
            "batch_id": lot["batch_id"],
            "raw_lots": sorted({i["lot"] for i in raw}),
            "raw_inputs": raw,
            "steps": steps,
        }

    # -- forward ------------------------------------------------------------------------
    def forward(self, code: str) -> dict[str, Any]:
        """Every lot made from lot ``code``, the finished ones, and where they went.

        The finished lots and shipments include ``code`` itself when it is a finished lot:
        recalling a pallet recalls that pallet.
        """
        known = self.db.execute(
            "SELECT 1 FROM lots WHERE lot = ? UNION ALL SELECT 1 FROM lot_consumption WHERE lot = ?"
            " LIMIT 1",
            (code, code),
        ).fetchone()
        if known is None:
            self.lot(code)  # raises UnknownLot
        lots = self._rows(
            _DOWNSTREAM
            + """
            SELECT l.lot, l.material, l.quantity, l.unit, l.batch_id, l.created_ts,
                   b.recipe, b.scrapped_reason
            FROM down JOIN lots l ON l.lot = down.lot
            LEFT JOIN batches b ON b.batch_id = l.batch_id
            ORDER BY l.lot
            """,
            {"lot": code},
        )
        finished = [lot for lot in lots if lot["material"] == FINISHED]
        shipments = self._rows(
            _DOWNSTREAM
            + """
            SELECT s.shipment_id, s.destination, s.ts, sl.lot, sl.quantity, sl.unit, sl.batch_id
            FROM down JOIN shipment_lots sl ON sl.lot = down.lot
            JOIN shipments s ON s.shipment_id = sl.shipment_id
            ORDER BY sl.lot, s.ts
            """,
            {"lot": code},
        )
        batches = sorted({lot["batch_id"] for lot in lots if lot["batch_id"]})
        return {
            "lot": code,
            "batches": batches,
            "scrapped_batches": sorted(
                {lot["batch_id"] for lot in lots if lot["scrapped_reason"] is not None}
            ),
            "lots": [lot["lot"] for lot in lots if lot["lot"] != code],
            "finished_lots": [lot["lot"] for lot in finished],
            "finished": finished,
            "shipments": shipments,
        }

    # -- recall -------------------------------------------------------------------------
    def recall_rows(self, code: str) -> list[dict[str, Any]]:
        """One row per affected finished lot and place it is: shipped, or still at the plant."""
        found = self.forward(code)
        shipped: dict[str, list[dict[str, Any]]] = {}
        for row in found["shipments"]:
            shipped.setdefault(row["lot"], []).append(row)
        sites = {
            row["batch_id"]: f"{row['site']}/{row['line']} warehouse"
            for row in self._rows(
                "SELECT batch_id, site, line FROM batches WHERE batch_id IN ({})".format(
                    ",".join("?" * len(found["batches"]))
                ),
                found["batches"],
            )
        }
        rows = []
        for lot in found["finished"]:
            product = f"{lot['recipe']} chocolate" if lot["recipe"] else "chocolate"
            for shipment in shipped.get(lot["lot"], []):
                rows.append(
                    {
                        "lot_code": lot["lot"],
                        "product": product,
                        "quantity": shipment["quantity"],
                        "unit": shipment["unit"] or "kg",
                        "location": shipment["destination"],
                        "date": iso(shipment["ts"]),
                        "batch_id": lot["batch_id"],
                        "shipment_id": shipment["shipment_id"],
                        "status": "shipped",
                        "_ts": shipment["ts"],
                    }
                )
            if lot["lot"] not in shipped:
                rows.append(
                    {
                        "lot_code": lot["lot"],
                        "product": product,
                        "quantity": lot["quantity"],
                        "unit": lot["unit"] or "kg",
                        "location": sites.get(lot["batch_id"], "plant"),
                        "date": iso(lot["created_ts"]),
                        "batch_id": lot["batch_id"],
                        "shipment_id": "",
                        "status": "in stock",
                        "_ts": lot["created_ts"] or 0,
                    }
                )
        rows.sort(key=lambda r: (r["lot_code"], r["_ts"]))
        for row in rows:
            del row["_ts"]
        return rows

    def recall_csv(self, code: str) -> str:
        """The recall report for lot ``code`` as CSV text, sorted by lot and time."""
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=RECALL_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.recall_rows(code))
        return out.getvalue()

    # -- mass balance -------------------------------------------------------------------
    def mass_balance(self, batch_id: str | None = None, tolerance: float = 0.01) -> list[dict]:
        """Raw in = product out + declared losses, per batch, within ``tolerance`` of raw in.

        ``status`` is ``ok``, ``FLAGGED`` (mass unaccounted for), ``in progress`` (a step
        is still running) or ``unknown`` (version 1 events declare no losses).
        """
        where = "WHERE b.batch_id = ?" if batch_id else ""
        batches = self._rows(
            f"SELECT b.batch_id, b.recipe, b.scrapped_reason FROM batches b {where}"
            " ORDER BY b.batch_id",
            (batch_id,) if batch_id else (),
        )
        report = []
        for batch in batches:
            bid = batch["batch_id"]
            execs = self._rows("SELECT * FROM step_executions WHERE batch_id = ?", (bid,))
            raw_in = self.db.execute(
                "SELECT coalesce(sum(c.quantity), 0) FROM lot_consumption c"
                " LEFT JOIN lots l ON l.lot = c.lot"
                " WHERE c.batch_id = ? AND (l.batch_id IS NULL OR l.batch_id != c.batch_id)",
                (bid,),
            ).fetchone()[0]
            out = self.db.execute(
                "SELECT coalesce(sum(l.quantity), 0) FROM lots l WHERE l.batch_id = ?"
                " AND NOT EXISTS (SELECT 1 FROM lot_consumption c"
                "                 WHERE c.lot = l.lot AND c.batch_id = l.batch_id)",
                (bid,),
            ).fetchone()[0]
            loss = sum(e["loss"] or 0 for e in execs)
            unexplained = raw_in - out - loss
            if not execs or any(e["completed_ts"] is None for e in execs):
                status = "in progress"
            elif any(e["schema_version"] == 1 for e in execs):
                status = "unknown"
            elif raw_in and abs(unexplained) > tolerance * raw_in:
                status = "FLAGGED"
            else:
                status = "ok"
            report.append(
                {
                    "batch_id": bid,
                    "recipe": batch["recipe"],
                    "raw_in_kg": round(raw_in, 3),
                    "out_kg": round(out, 3),
                    "declared_loss_kg": round(loss, 3),
                    "unexplained_kg": round(unexplained, 3),
                    "yield": round(out / raw_in, 4) if raw_in else None,
                    "scrapped": batch["scrapped_reason"] is not None,
                    "status": status,
                }
            )
        return report


def summary(path: str | Path) -> dict[str, int]:
    """Row counts of the main tables (for logs and the benchmark)."""
    db = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True)
    try:
        return {
            table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("mqtt_messages", "dead_letters", "batches", "lots", "shipments")
        }
    finally:
        db.close()
