"""The payload contract: JSON Schemas in ``schemas/``, checked and told in sentences.

:mod:`~mqtt_factory_lab.contract.catalog`
    loads every schema into one registry; :func:`validate` (jsonschema-rs decides,
    jsonschema explains a rejection), :func:`parse`, :func:`schema`
:mod:`~mqtt_factory_lab.contract.explanations`
    a schema violation as sentences; :class:`PayloadError`
:mod:`~mqtt_factory_lab.contract.topics`
    topic ↔ payload type: :func:`schema_for_topic`, :func:`validate_message`

Callers import from here: ``from mqtt_factory_lab.contract import validate, PayloadError``.
"""

from mqtt_factory_lab.contract.catalog import (
    SHARED,
    SUFFIX,
    check_all,
    chocolate_steps,
    device_kinds,
    fast_validator,
    names,
    parse,
    payload_names,
    registry,
    schema,
    validate,
    validator,
)
from mqtt_factory_lab.contract.explanations import MAX_PROBLEMS, PayloadError, explain
from mqtt_factory_lab.contract.topics import (
    CHOCOLATE_BATCH_VERSIONS,
    CHOCOLATE_LAYOUT,
    CHOCOLATE_SCHEMAS,
    TOPIC_SCHEMAS,
    schema_for_topic,
    validate_message,
)

# A failed check reads "mqtt_factory_lab.contract.PayloadError: ...", the name callers import.
PayloadError.__module__ = __name__


def __getattr__(name: str) -> object:
    # FactoryValidator is made on first use: it imports jsonschema, which only explains
    # rejections (see catalog.py), so importing the contract does not import it.
    if name == "FactoryValidator":
        from mqtt_factory_lab.contract import catalog

        return catalog.FactoryValidator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CHOCOLATE_BATCH_VERSIONS",
    "CHOCOLATE_LAYOUT",
    "CHOCOLATE_SCHEMAS",
    "MAX_PROBLEMS",
    "SHARED",
    "SUFFIX",
    "TOPIC_SCHEMAS",
    "FactoryValidator",
    "PayloadError",
    "check_all",
    "chocolate_steps",
    "device_kinds",
    "explain",
    "fast_validator",
    "names",
    "parse",
    "payload_names",
    "registry",
    "schema",
    "schema_for_topic",
    "validate",
    "validate_message",
    "validator",
]
