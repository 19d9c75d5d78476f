"""Raw-material lots: what suppliers deliver, and which lots a batch draws from.

A lot is the unit a recall works with. Raw materials arrive in lots of a fixed
size; a batch takes what it needs from the oldest open lot, and when that lot
runs out, the rest from the next one (so one batch can consume two lots of
sugar, and one lot of hazelnut paste ends up in several batches: exactly what
makes a forward trace interesting).
"""

from __future__ import annotations

from dataclasses import dataclass

#: lot code prefix and lot size (kg) per raw material
SUPPLY = {
    "cocoa_beans": ("CCB", 1500.0),
    "sugar": ("SUG", 1000.0),
    "milk_powder": ("MPW", 400.0),
    "cocoa_butter": ("CBT", 300.0),
    "hazelnut_paste": ("HZP", 40.0),
}


@dataclass
class _OpenLot:
    code: str
    left: float


class MaterialStore:
    """Hands out raw material by weight, lot after lot, with deterministic lot codes.

    >>> store = MaterialStore("r1")
    >>> store.take("hazelnut_paste", 30.0)
    [('HZP-r1-001', 30.0)]
    >>> store.take("hazelnut_paste", 30.0)
    [('HZP-r1-001', 10.0), ('HZP-r1-002', 20.0)]
    """

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self._open: dict[str, _OpenLot] = {}
        self._count: dict[str, int] = {}

    def _next_lot(self, material: str) -> _OpenLot:
        prefix, size = SUPPLY[material]
        self._count[material] = self._count.get(material, 0) + 1
        lot = _OpenLot(f"{prefix}-{self.run_id}-{self._count[material]:03d}", size)
        self._open[material] = lot
        return lot

    def take(self, material: str, kg: float) -> list[tuple[str, float]]:
        """Take ``kg`` of ``material``: ``[(lot code, kg), ...]``, oldest lot first."""
        taken: list[tuple[str, float]] = []
        need = round(kg, 3)
        while need > 1e-9:
            lot = self._open.get(material)
            if lot is None or lot.left <= 1e-9:
                lot = self._next_lot(material)
            part = round(min(need, lot.left), 3)
            lot.left = round(lot.left - part, 3)
            need = round(need - part, 3)
            taken.append((lot.code, part))
        return taken
