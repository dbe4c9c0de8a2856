"""Checking a message against the contract without building it, at a fraction of the cost.

`Model.model_validate_json` checks each money field with Python code (`_decimal_parser`
in models.py: a regex, a range, a sign) and builds Decimals and the model: a Tick costs
~6 us, more than nats-py takes to deliver it. `checker(Model)` builds, once per model, a
pydantic-core validator from the model's own core schema (its fields: strict types, u64
bounds, symbol/venue/interval patterns, required fields, unknown fields as the model
treats them) in which each money field is checked in Rust instead: the JSON string must
match the field's own pattern (models.py: the pattern carries the sign, the
at-most-14-digit range and the plain fixed-point form) and have at most
FAST_MONEY_CHARS characters (so at most 28 digits: always what the Python parser and a
96-bit decimal accept; a longer text goes to the model). ~1.3 us a Tick.

A Tick (the message every subscriber of md.tick.> checks, thousands a second) is first
read by the contract's Rust types themselves (`moonbus_sim.is_tick`: serde into
moonbus_common's Tick, nothing built for Python: 0.77 us against 1.7-2.3 us for the check
above, timed on one VM) when `make setup` has installed the module; only a tick they
refuse goes on to the check above, so a refusal still carries the model's reasons. The
Rust types are never more lenient than the model (tests/test_wire.py: the same vectors
and edge cases, as text and as bytes).

A message the fast check refuses is validated again by the model, so the refusal carries
the model's own reasons (those errors.<service> has always shown); the check is never
more lenient than the model (tests/test_wire.py: every vector of proto/vectors, and edge
cases, both ways).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

from pydantic import BaseModel
from pydantic_core import SchemaValidator, core_schema

from . import models
from .models import FAST_MONEY_CHARS

# A sign check after the parser that the pattern already implies: the pattern admits no
# zero (POSITIVE: a non-zero digit is required) / no minus sign (NON_NEGATIVE).
_IMPLIED = {
    (models._positive, models.POSITIVE_DECIMAL_PATTERN),
    (models._non_negative, models.NON_NEGATIVE_DECIMAL_PATTERN),
}

def _money_pattern(schema: dict[str, Any]) -> str | None:
    """The wire pattern of a money schema (a function-before around `decimal`, whose
    function is models._decimal_parser's `parse`, possibly inside a function-after
    check), else None."""
    if schema.get("type") != "function-before" or schema.get("schema", {}).get("type") != "decimal":
        return None
    function = schema.get("function", {}).get("function")
    if getattr(function, "__qualname__", "") != "_decimal_parser.<locals>.parse":
        return None
    for cell in function.__closure__ or ():
        if isinstance(cell.cell_contents, re.Pattern):
            return str(cell.cell_contents.pattern)
    return None


def _fast_money(pattern: str) -> core_schema.CoreSchema:
    # A string of the pattern of at most FAST_MONEY_CHARS: at most 28 digits, so always
    # what a 96-bit decimal holds. _decimal_parser accepts these and more: a longer text
    # (up to MAX_DECIMAL_CHARS, one of risk's 29-digit quotients) is refused here and then
    # judged by the model, as every refusal is.
    return core_schema.str_schema(pattern=pattern, max_length=FAST_MONEY_CHARS, strict=True)


def _rewrite(node: Any) -> tuple[Any, int]:
    """A copy of a core schema with each money field's Python parser replaced by
    `_fast_money`; the count of replacements. A sign check after the parser goes too when
    the pattern implies it (_IMPLIED); any other check after it is kept."""
    if isinstance(node, dict):
        pattern = _money_pattern(node)
        if pattern is not None:
            return _fast_money(pattern), 1
        if node.get("type") == "function-after" and isinstance(node.get("schema"), dict):
            inner = _money_pattern(node["schema"])
            if inner is not None and (node.get("function", {}).get("function"), inner) in _IMPLIED:
                return _fast_money(inner), 1
        out, n = {}, 0
        for k, v in node.items():
            if k in ("serialization", "metadata"):
                out[k] = v
                continue
            out[k], m = _rewrite(v)
            n += m
        return out, n
    if isinstance(node, list):
        items = [_rewrite(v) for v in node]
        return [v for v, _ in items], sum(m for _, m in items)
    return node, 0


_CACHE: dict[type[BaseModel], Callable[[bytes | str], None]] = {}


def rust_check(model: type[BaseModel]) -> Callable[[bytes], bool] | None:
    """`is_<model>(data) -> bool` of the contract's Rust types, when moonbus_sim is installed
    and has one for `model` (Tick)."""
    try:
        import moonbus_sim
    except ImportError:
        return None
    return getattr(moonbus_sim, f"is_{model.__name__.lower()}", None)


def checker(model: type[BaseModel]) -> Callable[[bytes | str], None]:
    """`check(data)`: returns when `data` is a valid `model` (JSON), else raises the
    model's own ValidationError (its reasons). Nothing is built: for a subscriber that
    keeps the bytes and decodes only those it reads (e.g. the latest tick of a symbol)."""
    cached = _CACHE.get(model)
    if cached is not None:
        return cached
    schema = model.__pydantic_core_schema__
    slow = model.model_validate_json
    if schema.get("type") != "model" or schema.get("schema", {}).get("type") != "model-fields":
        def check_slow(data: bytes | str) -> None:  # a model-level validator: only the model knows
            slow(data)

        _CACHE[model] = check_slow
        return check_slow
    fields, _ = _rewrite(schema["schema"])
    fast = SchemaValidator(fields, schema.get("config")).validate_json
    rust = rust_check(model)

    def check(data: bytes | str) -> None:
        if rust is not None and type(data) is bytes and rust(data):
            return
        try:
            fast(data)
        except ValueError:  # pydantic_core.ValidationError: the model's reasons (or its acceptance)
            slow(data)

    _CACHE[model] = check
    return check


def _is_money(node: Any) -> bool:
    return isinstance(node, dict) and (_money_pattern(node) is not None or (
        node.get("type") == "function-after" and isinstance(node.get("schema"), dict)
        and _money_pattern(node["schema"]) is not None
        and (node.get("function", {}).get("function"), _money_pattern(node["schema"])) in _IMPLIED))


def _top_level_money(fields_schema: dict[str, Any]) -> list[str] | None:
    """The fields that are money (maybe nullable, maybe with a default), or None when money
    sits deeper (a list of price levels): then only the model builds it."""
    names = []
    for name, field in fields_schema["fields"].items():
        node = field["schema"]
        while node.get("type") in ("default", "nullable"):
            node = node["schema"]
        if _is_money(node):
            names.append(name)
        elif _rewrite(node)[1]:
            return None
    return names


_DECODERS: dict[type[BaseModel], Callable[[bytes | str], Any]] = {}


def decoder(model: type[M]) -> Callable[[bytes | str], M]:
    """`decode(data) -> model`: what `model.model_validate_json(data)` returns, built from
    the fast check's fields (each money string made the Decimal the model's parser makes),
    ~2x faster; a refusal is the model's own (its ValidationError). Models with money
    below the top level, or with a model-level validator, are decoded by the model."""
    cached = _DECODERS.get(model)
    if cached is not None:
        return cached
    schema = model.__pydantic_core_schema__
    slow = model.model_validate_json
    money = None
    if (schema.get("type") == "model" and schema.get("schema", {}).get("type") == "model-fields"
            and not schema["schema"].get("computed_fields") and not schema.get("post_init")
            and schema.get("config", {}).get("extra_fields_behavior", "ignore") != "allow"):
        money = _top_level_money(schema["schema"])
    if not money:
        _DECODERS[model] = slow
        return slow
    fields, _ = _rewrite(schema["schema"])
    fast = SchemaValidator(fields, schema.get("config")).validate_json
    new, setattr_ = object.__new__, object.__setattr__

    def decode(data: bytes | str) -> M:
        try:
            values, _extra, fields_set = fast(data)
        except ValueError:  # pydantic_core.ValidationError: the model's reasons (or its acceptance)
            return slow(data)
        for name in money:
            v = values.get(name)
            if v is not None:
                values[name] = Decimal(v)
        instance = new(model)
        setattr_(instance, "__dict__", values)
        setattr_(instance, "__pydantic_fields_set__", fields_set)
        setattr_(instance, "__pydantic_extra__", None)
        setattr_(instance, "__pydantic_private__", None)
        return instance  # type: ignore[no-any-return]

    _DECODERS[model] = decode
    return decode
