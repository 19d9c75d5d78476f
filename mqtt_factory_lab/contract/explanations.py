"""The payload contract, told: a schema violation as sentences a student can act on.

jsonschema reports *where* in the schema a payload failed; a student needs *what to change
in the payload*: "field 'seq' must be at least 0, but it is -1", "field 'unti' is not
allowed here (did you mean 'unit'?)". :func:`explain` turns one
:class:`jsonschema.ValidationError` into such sentences; :class:`PayloadError` carries them.
"""

from __future__ import annotations

import difflib
import json
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

# jsonschema is imported by whoever made the error being explained; not at import time
# (it is ~50 ms of every start, and the hot path never needs it).
if TYPE_CHECKING:
    from jsonschema.exceptions import ValidationError

MAX_PROBLEMS = 3

#: how a schema's $ref names its target: uri -> the target schema's title (or None)
TitleOf = Callable[[str], "str | None"]

_TYPE_WORDS = {
    "number": "a finite number",
    "integer": "a whole number",
    "string": "a string",
    "object": "a JSON object",
    "array": "a list",
    "boolean": "true or false",
    "null": "null",
}


class PayloadError(ValueError):
    """A payload that breaks the contract; ``str()`` is a sentence that says how.

    :param message: the whole sentence, e.g. ``"the state payload is invalid: ..."``.
    :param schema_name: the schema checked against, or None when none applies (unknown topic).
    :param problems: one sentence per problem, most relevant first (the message shows
        up to three of them).
    :param errors: the underlying :class:`jsonschema.ValidationError` objects, most relevant
        first; empty when the payload could not even be parsed.
    :param payload: what was given: the raw bytes/str, or the parsed object.
    """

    def __init__(
        self,
        message: str,
        *,
        schema_name: str | None,
        problems: Iterable[str] = (),
        errors: Iterable[ValidationError] = (),
        payload: Any = None,
    ) -> None:
        super().__init__(message)
        self.schema_name = schema_name
        self.problems = list(problems)
        self.errors = list(errors)
        self.payload = payload


def explain(error: ValidationError, root: Mapping[str, Any], title_of: TitleOf) -> list[str]:
    """One or more sentences for one validation error of a payload against schema ``root``.

    :param title_of: names the schema a ``$ref`` points at, so that a failed ``oneOf`` can
        say which alternative the payload was read as ("read as a decision event, ...").
    """
    return _explain(error, root, title_of)


def _where(path: Iterable[Any]) -> str:
    """``deque(['counters', 'produced'])`` → ``"field 'counters.produced'"``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return f"field {text!r}" if text else "the payload"


def _field(path: Iterable[Any], key: str) -> str:
    return _where([*path, key])


def _show(value: Any) -> str:
    """How a value reads in a sentence: JSON spelling, with its type where that helps."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        spelled = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        return f"{spelled} (JSON has no NaN or Infinity)"
    if isinstance(value, numbers.Number):
        return repr(value)
    if isinstance(value, str):
        return f"the string {_clip(value)!r}" if _looks_numeric(value) else repr(_clip(value))
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text.strip().lower() in {"true", "false", "null"}
    return True


def _words(values: Iterable[Any]) -> str:
    return ", ".join(json.dumps(v) if not isinstance(v, str) else repr(v) for v in values)


def _hint(error: ValidationError) -> str:
    hint = error.schema.get("x-hint") if isinstance(error.schema, Mapping) else None
    return f" ({hint})" if hint else ""


def _condition(error: ValidationError, root: Mapping[str, Any]) -> str:
    """For an error under ``then``: " when 'command' is 'set'", read from the matching ``if``."""
    path = list(error.schema_path)
    if "then" not in path:
        return ""
    node: Any = root
    for key in path[: path.index("then")]:
        if key == "$ref" or not isinstance(node, (Mapping, list)):
            return ""
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            return ""
    condition = node.get("if", {}) if isinstance(node, Mapping) else {}
    parts = [
        f"{prop!r} is {sub['const']!r}"
        for prop, sub in condition.get("properties", {}).items()
        if isinstance(sub, Mapping) and "const" in sub
    ]
    return f" when {' and '.join(parts)}" if parts else ""


def _explain(error: ValidationError, root: Mapping[str, Any], title_of: TitleOf) -> list[str]:
    """One or more sentences for one validation error."""
    keyword = error.validator
    value = error.validator_value
    instance = error.instance
    where = _where(error.absolute_path)
    when = _condition(error, root)

    if keyword == "required":
        missing = [key for key in value if key not in instance]
        return [
            f"{_field(error.absolute_path, key)} is required{when}, but it is missing"
            for key in missing
        ]
    if keyword == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        extras = [key for key in instance if key not in allowed]
        sentences = []
        for key in extras:
            guess = difflib.get_close_matches(key, allowed, n=1)
            tip = f" (did you mean {guess[0]!r}?)" if guess else f" (allowed: {_words(allowed)})"
            sentences.append(f"{_field(error.absolute_path, key)} is not allowed here{tip}")
        return sentences
    if keyword == "enum" and len(value) == 1:
        return [f"{where} must be {_words(value)}{when}, but it is {_show(instance)}"]
    if keyword == "enum":
        return [f"{where} must be one of {_words(value)}{when}, but it is {_show(instance)}"]
    if keyword == "const":
        return [f"{where} must be {_words([value])}{when}, but it is {_show(instance)}"]
    if keyword == "type":
        wanted = value if isinstance(value, list) else [value]
        expected = " or ".join(_TYPE_WORDS.get(t, t) for t in wanted)
        return [f"{where} must be {expected}, but it is {_show(instance)}{_hint(error)}"]
    if keyword in {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}:
        bound = {
            "minimum": "at least",
            "maximum": "at most",
            "exclusiveMinimum": "greater than",
            "exclusiveMaximum": "less than",
        }[keyword]
        return [f"{where} must be {bound} {value}, but it is {_show(instance)}{_hint(error)}"]
    if keyword == "minLength":
        if value == 1:
            return [f"{where} must not be empty"]
        return [f"{where} must be at least {value} characters long, but it has {len(instance)}"]
    if keyword == "maxLength":
        return [f"{where} must be at most {value} characters long, but it has {len(instance)}"]
    if keyword == "pattern":
        hint = error.schema.get("x-hint")
        rule = hint if hint else f"match the pattern {value}"
        return [f"{where} must {rule}, but it is {_show(instance)}"]
    if keyword == "oneOf" and error.context:
        return _explain_one_of(error, root, title_of)
    if keyword == "anyOf" and error.context:
        types = [e for e in error.context if e.validator == "type" and not e.relative_path]
        if len(types) == len(error.context):
            wanted = [_TYPE_WORDS.get(e.validator_value, e.validator_value) for e in types]
            return [f"{where} must be {' or '.join(wanted)}, but it is {_show(instance)}"]
        from jsonschema.exceptions import best_match

        deepest = best_match(error.context)
        return (
            _explain(deepest, root, title_of)
            if deepest is not None
            else [f"{where}: {error.message}"]
        )
    return [f"{where}: {error.message}"]


def _explain_one_of(
    error: ValidationError, root: Mapping[str, Any], title_of: TitleOf
) -> list[str]:
    """Explain a failed ``oneOf`` by the alternative the payload was closest to.

    An alternative whose discriminator (a ``const``, such as ``"event": "decision"``) the
    payload does not match is only a candidate when every alternative fails that way.
    """
    if not isinstance(error.validator_value, list):
        return [f"{_where(error.absolute_path)}: {error.message}"]
    branches: dict[int, list[ValidationError]] = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    if not branches:  # every alternative matched: too many, not too few
        return [f"{_where(error.absolute_path)}: {error.message}"]

    def misses_discriminator(errors: list[ValidationError]) -> bool:
        return any(e.validator == "const" and len(e.relative_path) == 1 for e in errors)

    from jsonschema.exceptions import relevance

    close = {i: errs for i, errs in branches.items() if not misses_discriminator(errs)}
    if not close:
        consts = [
            e
            for errs in branches.values()
            for e in errs
            if e.validator == "const" and len(e.relative_path) == 1
        ]
        paths = {tuple(e.absolute_path) for e in consts}
        if len(paths) == 1:
            values = [e.validator_value for e in consts]
            return [
                f"{_where(consts[0].absolute_path)} must be one of {_words(values)}, "
                f"but it is {_show(consts[0].instance)}"
            ]
        close = branches
    explained = {
        i: list(  # dict.fromkeys: unique, in order
            dict.fromkeys(
                sentence
                for sub in sorted(errs, key=relevance, reverse=True)
                for sentence in _explain(sub, root, title_of)
            )
        )
        for i, errs in close.items()
    }
    if len(explained) > 1 and len({tuple(found) for found in explained.values()}) == 1:
        return next(iter(explained.values()))  # every alternative fails the same way
    index = min(close, key=lambda i: (len(close[i]), i))
    sentences = explained[index]
    label = _alternative_name(error.validator_value[index], title_of)
    if label and sentences:
        sentences = [f"read as {label}, {sentences[0]}", *sentences[1:]]
    return sentences


def _alternative_name(alternative: Any, title_of: TitleOf) -> str:
    if isinstance(alternative, Mapping):
        ref = alternative.get("$ref")
        title = (title_of(ref) if isinstance(ref, str) else None) or alternative.get("title")
        if title:
            article = "an" if title[0].lower() in "aeiou" else "a"
            return f"{article} {title[0].lower()}{title[1:]}"
    return ""


# -- topics -----------------------------------------------------------------------------
