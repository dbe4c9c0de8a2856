"""services/contract/wire.py: the fast contract check accepts exactly what the models
accept, and the fast decoder builds exactly what they build (every vector of
proto/vectors, and each field of each valid vector set to edge values); a refusal carries
the model's own reasons."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from services.contract.models import MESSAGES, AccountState, Bar, Tick, Verdict, encode
from services.contract.wire import checker, decoder

VECTORS = Path(__file__).resolve().parents[1] / "proto" / "vectors"
EDGES: list[Any] = [
    # money as the wire has it, and what it must not be
    "0", "-0", "0.0", "00", "0.5", "-0.5", "1", "1.", ".5", "+1", "1e5", "1E5", "NaN", "Infinity", "-Infinity",
    " 1", "1 ", "1\n", "1_000", "\u0661", "99999999999999.99", "100000000000000", "-100000000000000",
    "0.0000001", "0." + "0" * 36 + "1", "1." + "0" * 39, "",
    # what a 96-bit decimal holds: 28 places, digits below 2^96 (the Rust types' own limits)
    "0." + "0" * 27 + "1", "0." + "0" * 28 + "1", "0.1" + "0" * 28, "33.333333333333333333333333333",
    "79228162514.264337593543950335", "79228162514.264337593543950336", "-79228162514.264337593543950336",
    "99999999999999.99999999999999", "99999999999999.999999999999999", "1." + "0" * 28,
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
    """What the check says of `raw` as text and as bytes (as the bus delivers it: a Tick is
    first read by the contract's Rust types then), which must agree."""
    said = []
    for data in (raw, raw.encode()):
        try:
            checker(MESSAGES[name])(data)
        except ValidationError:
            said.append(False)
        else:
            said.append(True)
    assert said[0] == said[1], (name, raw, said)
    return said[0]


@pytest.mark.parametrize(("name", "path"), _vectors("valid"), ids=lambda v: getattr(v, "stem", v))
def test_valid_vectors_pass_the_check(name: str, path: Path) -> None:
    checker(MESSAGES[name])(path.read_text())
    checker(MESSAGES[name])(path.read_bytes())


@pytest.mark.parametrize(("name", "path"), _vectors("invalid"), ids=lambda v: getattr(v, "stem", v))
def test_invalid_vectors_are_refused_with_the_models_reasons(name: str, path: Path) -> None:
    raw = path.read_text()
    with pytest.raises(ValidationError) as model_error:
        MESSAGES[name].model_validate_json(raw)
    for data in (raw, raw.encode()):
        with pytest.raises(ValidationError) as check_error:
            checker(MESSAGES[name])(data)
        # (compared as text: a NaN input is not equal to itself)
        assert repr(check_error.value.errors(include_context=False)) == repr(model_error.value.errors(include_context=False))


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


def test_a_tick_is_read_first_by_the_contracts_rust_types() -> None:
    """`make setup` installs moonbus_sim, whose is_tick is serde into moonbus_common's Tick;
    the edge-value and vector tests above hold it to never accept what the model refuses."""
    from services.contract.wire import rust_check

    is_tick = rust_check(Tick)
    assert is_tick is not None, "moonbus_sim without is_tick: run `make setup`"
    valid = (VECTORS / "valid" / "Tick").glob("*.json")
    assert all(is_tick(p.read_bytes()) for p in valid)
    assert not is_tick(b'{"venue":"sim","symbol":"BTC-USD","price":"-1","seq":1,"ts":1}')
    assert rust_check(Verdict) is None  # only the tick, the message that arrives by the thousand


def test_the_check_is_the_fast_path_for_the_hot_messages() -> None:
    """Bar and Tick have money fields: their check is the rewritten validator, not the model
    (a model without money fields is checked by the model itself, already all Rust)."""
    from services.contract import wire

    for name in ("Tick", "Bar", "Book", "PriceAlert", "Verdict", "AccountState"):
        schema, replaced = wire._rewrite(MESSAGES[name].__pydantic_core_schema__)
        assert replaced >= 1, name
        assert "_decimal_parser" not in repr(schema), name


# ---------------------------------------------------------------- decoder: the model built faster


def _same(a: Any, b: Any) -> bool:
    """Equal models, down to each Decimal's digits (1.10 is not 1.1 on the wire) and the fields set."""
    return (type(a) is type(b) and a == b and a.model_fields_set == b.model_fields_set
            and encode(a) == encode(b) and repr(a) == repr(b))


def _decode_both(name: str, raw: str) -> tuple[Any, Any]:
    model = MESSAGES[name]
    try:
        want: Any = model.model_validate_json(raw)
    except ValidationError as e:
        want = e.errors(include_context=False)
    try:
        got: Any = decoder(model)(raw)
    except ValidationError as e:
        got = e.errors(include_context=False)
    return want, got


@pytest.mark.parametrize(("name", "path"), _vectors("valid") + _vectors("invalid"),
                         ids=lambda v: getattr(v, "stem", v))
def test_the_decoder_builds_what_the_model_builds_and_refuses_what_it_refuses(name: str, path: Path) -> None:
    want, got = _decode_both(name, path.read_text())
    assert _same(got, want) if isinstance(want, BaseModel) else repr(got) == repr(want)  # (a NaN input)


@pytest.mark.parametrize(("name", "path"), _vectors("valid"), ids=lambda v: getattr(v, "stem", v))
def test_the_decoder_at_edge_values(name: str, path: Path) -> None:
    message = json.loads(path.read_text())
    if not isinstance(message, dict):
        pytest.skip("not an object")
    differences = []
    for field in list(message) + ["unknown_field"]:
        for value in EDGES:
            want, got = _decode_both(name, json.dumps({**message, field: value}))
            if not (_same(got, want) if isinstance(want, BaseModel) else got == want):
                differences.append((field, value))
    assert not differences


def test_the_decoder_is_the_fast_path_for_bars_and_ticks() -> None:
    for model in (Bar, Tick, Verdict, AccountState):
        assert getattr(decoder(model), "__name__", "") == "decode", model.__name__
