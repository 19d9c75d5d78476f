"""Broken on purpose (lesson 11): every delivery of an alarm is counted as a new alarm."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from sim import exporter


class EveryDelivery(exporter.FactoryMetrics):
    def alarm_is_new(self, identity: tuple) -> bool:
        return True  # the mistake: QoS 1 is at least once, a retry is not a new alarm


sys.exit(exporter.main(metrics_class=EveryDelivery))
