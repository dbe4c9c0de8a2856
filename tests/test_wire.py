"""services/contract/wire.py: the fast contract check accepts exactly what the models
accept (every vector of proto/vectors, and each field of each valid vector set to edge
values), and a refusal carries the model's own reasons."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from services.contract.models import MESSAGES, Tick
from services.contract.wire import checker

VECTORS = Path(__file__).resolve().parents[1] / "proto" / "vectors"
EDGES: list[Any] = [
    # money as the wire has it, and what it must not be
    "0", "-0", "0.0", "00", "0.5", "-0.5", "1", "1.", ".5", "+1", "1e5", "1E5", "NaN", "Infinity", "-Infinity",
    " 1", "1 ", "1\n", "1_000", "\u0661", "99999999999999.99", "100000000000000", "-100000000000000",
    "0.0000001", "0." + "0" * 36 + "1", "1." + "0" * 39, "",
    # other types
    1, 0, -1, 1.5, 1.0, True, False, None, 2**64 - 1, 2**64, -(2**63), [], {},
    # symbols, venues, intervals, enums
    "BTC-USD", "btc-usd", "BTC-USD\n", "BTC.USD", "BTC-*", "sim", "SIM", "sim\n", "1s", "1S", "60m", "BUY", "buy",
]


def _vectors(kind: str) -> list[tuple[str, Path]]:
    return sorted((p.parent.name, p) for p in (VECTORS / kind).glob("*/*.json"))


def _model_accepts(name: str, raw: str) -> bool:
    try:
        MESSAGES[name].model_validate_json(raw)
    except ValidationError:
        return False
    return True


def _check_accepts(name: str, raw: str) -> bool:
    try:
        checker(MESSAGES[name])(raw)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize(("name", "path"), _vectors("valid"), ids=lambda v: getattr(v, "stem", v))
def test_valid_vectors_pass_the_check(name: str, path: Path) -> None:
    checker(MESSAGES[name])(path.read_text())


@pytest.mark.parametrize(("name", "path"), _vectors("invalid"), ids=lambda v: getattr(v, "stem", v))
def test_invalid_vectors_are_refused_with_the_models_reasons(name: str, path: Path) -> None:
    raw = path.read_text()
    with pytest.raises(ValidationError) as model_error:
        MESSAGES[name].model_validate_json(raw)
    with pytest.raises(ValidationError) as check_error:
        checker(MESSAGES[name])(raw)
    assert check_error.value.errors(include_context=False) == model_error.value.errors(include_context=False)


@pytest.mark.parametrize(("name", "path"), _vectors("valid"), ids=lambda v: getattr(v, "stem", v))
def test_each_field_at_edge_values_is_judged_as_the_model_judges_it(name: str, path: Path) -> None:
    message = json.loads(path.read_text())
    if not isinstance(message, dict):
        pytest.skip("not an object")
    differences = []
    for field in list(message) + ["unknown_field"]:
        for value in EDGES:
            raw = json.dumps({**message, field: value})
            if _check_accepts(name, raw) != _model_accepts(name, raw):
                differences.append((field, value, _model_accepts(name, raw)))
        without = json.dumps({k: v for k, v in message.items() if k != field})
        if _check_accepts(name, without) != _model_accepts(name, without):
            differences.append((field, "<missing>", _model_accepts(name, without)))
    assert not differences  # (field, value, what the model says)


def test_not_json_and_not_an_object_are_refused() -> None:
    check = checker(Tick)
    for raw in (b"", b"{", b"[]", b"null", b'"tick"', b"\xff\xfe"):
        with pytest.raises(ValidationError):
            check(raw)


def test_the_check_is_the_fast_path_for_the_hot_messages() -> None:
    """Bar and Tick have money fields: their check is the rewritten validator, not the model
    (a model without money fields is checked by the model itself, already all Rust)."""
    from services.contract import wire

    for name in ("Tick", "Bar", "Book", "PriceAlert", "Verdict", "AccountState"):
        schema, replaced = wire._rewrite(MESSAGES[name].__pydantic_core_schema__)
        assert replaced >= 1, name
        assert "_decimal_parser" not in repr(schema), name
