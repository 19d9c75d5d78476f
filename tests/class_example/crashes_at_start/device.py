"""A device that crashes as it starts (a typo in a module name)."""

import sys

import paho.mqtt.clinet as mqtt  # type: ignore[import-not-found]  # the typo

mqtt.Client()
sys.exit(0)
