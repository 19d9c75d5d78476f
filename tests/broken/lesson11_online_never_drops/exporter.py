"""Broken on purpose (lesson 11): online is set from "online" statuses only."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from sim import exporter


class OnlineOnly(exporter.FactoryMetrics):
    def on_status(self, payload: dict) -> None:
        if payload["status"] == "online":  # the mistake: offline (the Last Will) is ignored
            self.online.labels(device=payload["device_id"]).set(1)


sys.exit(exporter.main(metrics_class=OnlineOnly))
