"""The options that say which broker to judge and how to log in: one table, two parsers.

``pytest`` (the plugin's ``pytest_addoption``) and ``mqtt-lab conformance`` (argparse) both
register their connection options from :data:`BROKER_OPTIONS`, so a flag, its environment
variable, its metavar and its help read the same in ``pytest --help`` and
``mqtt-lab conformance --help``, and a new one is one more row here.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

from mqtt_factory_lab.core.connection import ENV_PASSWORD

ENV_URL = "MQTT_LAB_BROKER_URL"


@dataclass(frozen=True)
class BrokerOption:
    """One option: its flag, the environment variable that gives its default, its help."""

    flag: str
    metavar: str
    help: str
    env: str | None = None
    default: str | None = None

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    def default_value(self, environ: dict[str, str] | None = None) -> str | None:
        environ = os.environ if environ is None else environ
        if self.env is not None and self.env in environ:
            return environ[self.env]  # an empty value stays empty: a usage error, not "unset"
        return self.default

    def full_help(self) -> str:
        return self.help + (f" (${self.env})" if self.env else "")


BROKER_OPTIONS = (
    BrokerOption(
        "--broker-url",
        "URL",
        "the broker someone else runs: mqtt://HOST:PORT, mqtts:// (TLS), ws:// or wss:// "
        "(WebSockets, path after the port), with an optional USER:PASSWORD@; with pytest it "
        "implies --broker-backend=external; an empty value is an error",
        env=ENV_URL,
    ),
    BrokerOption(
        "--broker-url-mqtt5",
        "URL",
        "where MQTT 5 clients connect, when the broker serves MQTT 5 on another listener",
        env="MQTT_LAB_BROKER_URL_MQTT5",
    ),
    BrokerOption(
        "--broker-username",
        "NAME",
        f"the login of every client the lab makes; the password comes from ${ENV_PASSWORD} "
        "(never from an option, where ps would show it)",
        env="MQTT_LAB_BROKER_USERNAME",
    ),
    BrokerOption(
        "--broker-password-env",
        "VARIABLE",
        f"the environment variable that holds the password (default {ENV_PASSWORD})",
        default=ENV_PASSWORD,
    ),
    BrokerOption(
        "--broker-ca", "FILE", "CA certificate of the broker's TLS listener; turns TLS on"
    ),
    BrokerOption("--broker-cert", "FILE", "client certificate, for brokers that want mutual TLS"),
    BrokerOption("--broker-key", "FILE", "the client certificate's private key"),
)


def add_to_pytest(group: Any) -> None:
    """Register :data:`BROKER_OPTIONS` in a pytest option group (``parser.getgroup(...)``)."""
    for option in BROKER_OPTIONS:
        group.addoption(
            option.flag,
            dest=option.dest,
            default=option.default_value(),
            metavar=option.metavar,
            help=option.full_help(),
        )


def add_to_argparse(group: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    """Register :data:`BROKER_OPTIONS` in an argparse parser or group."""
    for option in BROKER_OPTIONS:
        group.add_argument(
            option.flag,
            dest=option.dest,
            default=option.default_value(),
            metavar=option.metavar,
            help=option.full_help(),
        )


def passed_on(values: dict[str, Any]) -> list[str]:
    """``--flag=value`` for each option of :data:`BROKER_OPTIONS` set in ``values`` (by dest)
    but ``--broker-url``, which the caller passes itself."""
    return [
        f"{o.flag}={values[o.dest]}"
        for o in BROKER_OPTIONS
        if o.flag != "--broker-url" and values.get(o.dest) not in (None, o.default)
    ]
