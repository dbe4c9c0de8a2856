"""The contract: schema files match the models, and every vector is judged the same
way by the pydantic models and by the JSON Schemas (the Rust crate runs the same
vectors in rust-common/tests/vectors.rs)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from pydantic import ValidationError

from services.contract import schemagen
from services.contract.models import MESSAGES, decode, encode

VECTORS = Path(__file__).resolve().parents[1] / "proto" / "vectors"


def _vectors(kind: str) -> list[tuple[str, Path]]:
    return sorted(
        (p.parent.name, p) for p in (VECTORS / kind).glob("*/*.json")
    )


def _schema_validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((schemagen.SCHEMA_DIR / f"{name}.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_schema_files_match_models() -> None:
    assert schemagen.main(["--check"]) == 0, "run: python -m services.contract.schemagen"


def test_every_message_has_vectors() -> None:
    for name in MESSAGES:
        assert list((VECTORS / "valid" / name).glob("*.json")), f"no valid vector for {name}"
        assert len(list((VECTORS / "invalid" / name).glob("*.json"))) >= 2, name
    for kind in ("valid", "invalid"):
        for folder in (VECTORS / kind).iterdir():
            assert folder.name in MESSAGES, f"vectors for unknown message {folder.name}"


@pytest.mark.parametrize(("name", "path"), _vectors("valid"), ids=lambda v: getattr(v, "stem", v))
def test_valid_vector_accepted(name: str, path: Path) -> None:
    raw = path.read_text()
    _schema_validator(name).validate(json.loads(raw))
    message = decode(MESSAGES[name], raw)
    # What we write, we read back unchanged.
    assert decode(MESSAGES[name], encode(message)) == message


# Money whose digits, the point taken out, reach 2^96: refused by the models and the Rust
# types; no JSON Schema pattern can compare a number, so the schemas say it in words.
BEYOND_A_PATTERN = {"quantity-beyond-96-bits"}


def _strict_json(raw: str) -> object | None:
    """`raw` parsed as JSON has it, or None: Python's parser takes NaN and Infinity."""
    def refuse(token: str) -> object:
        raise ValueError(token)
    try:
        return json.loads(raw, parse_constant=refuse)
    except ValueError:
        return None


@pytest.mark.parametrize(("name", "path"), _vectors("invalid"), ids=lambda v: getattr(v, "stem", v))
def test_invalid_vector_rejected(name: str, path: Path) -> None:
    raw = path.read_text()
    if path.stem in BEYOND_A_PATTERN:
        assert "2^96" in json.dumps(json.loads((schemagen.SCHEMA_DIR / f"{name}.json").read_text()))
    elif (parsed := _strict_json(raw)) is not None:  # (NaN, Infinity: not JSON, no schema judges it)
        assert not _schema_validator(name).is_valid(parsed), "schema accepted it"
    with pytest.raises(ValidationError):
        decode(MESSAGES[name], raw)


def test_money_is_written_as_fixed_point_strings() -> None:
    tick = decode(MESSAGES["Tick"], (VECTORS / "valid" / "Tick" / "basic.json").read_text())
    wire = json.loads(encode(tick))
    assert wire["price"] == "97000.5" and isinstance(wire["price"], str)
    from decimal import Decimal

    tick.price = Decimal("1E-7")
    assert json.loads(encode(tick))["price"] == "0.0000001"


def test_money_range_holds_for_values_built_in_code() -> None:
    """Below 1e14 and finite, from the wire or from Python code alike, so no service
    writes what the Rust side refuses (the range keeps price x quantity inside
    rust_decimal's 96 bits)."""
    from decimal import Decimal

    from services.contract.models import MONEY_LIMIT, OrderRequest

    raw = (VECTORS / "valid" / "OrderRequest" / "basic.json").read_text()
    fields = dict(decode(OrderRequest, raw))
    edge = OrderRequest(**{**fields, "quantity": Decimal("99999999999999.99")})
    assert json.loads(encode(edge))["quantity"] == "99999999999999.99"
    for bad in (MONEY_LIMIT, Decimal("1E+20"), Decimal("NaN"), Decimal("Infinity")):
        with pytest.raises(ValidationError):
            OrderRequest(**{**fields, "quantity": bad})
    attack = {**json.loads(raw), "quantity": "79228162514264337593543950335"}
    with pytest.raises(ValidationError, match="out of range"):
        decode(OrderRequest, json.dumps(attack))


# What a 96-bit decimal holds (rust_decimal, the Rust services' money): at most 28 places,
# the digits below 2^96. Each text as the models and the schemas judge it.
PRECISION_EDGES = {
    "0." + "0" * 27 + "1": True,
    "0." + "0" * 28 + "1": False,
    "0.1" + "0" * 28: False,  # 29 places, even of zeros
    "33.333333333333333333333333333": True,  # 29 digits: risk's average price, a quotient
    "79228162514.264337593543950335": True,  # 2^96 - 1
    "79228162514.264337593543950336": False,  # 2^96
    "99999999999999.99999999999999": True,
    "99999999999999.999999999999999": False,
    "1." + "0" * 28: True,
}


@pytest.mark.parametrize("text", list(PRECISION_EDGES))
def test_money_is_what_a_96_bit_decimal_holds(text: str) -> None:
    """The models refuse what the Rust services' decimal cannot hold exactly (it refused it
    alone before: an order the gateway took was then REJECTED by execution); the schemas'
    patterns say the 28 places, their description the 2^96."""
    raw = json.loads((VECTORS / "valid" / "OrderRequest" / "basic.json").read_text())
    raw["limit_price"] = text
    schema_ok = _schema_validator("OrderRequest").is_valid(raw)
    if PRECISION_EDGES[text]:
        assert schema_ok
        assert json.loads(encode(decode(MESSAGES["OrderRequest"], json.dumps(raw))))["limit_price"] == text
    else:
        with pytest.raises(ValidationError, match="96-bit decimal"):
            decode(MESSAGES["OrderRequest"], json.dumps(raw))
        assert schema_ok == (len(text.partition(".")[2]) <= 28), "the pattern bounds the places"


def test_money_built_in_code_is_rounded_to_what_the_wire_holds() -> None:
    """Python keeps 28 significant digits, so a quotient below 1 can have 30 places: built
    in code, it is rounded (half to even) to 28, never written as what Rust refuses."""
    from decimal import Decimal

    from services.contract.models import Tick

    raw = json.loads((VECTORS / "valid" / "Tick" / "basic.json").read_text())
    tick = Tick(**{**raw, "price": Decimal("0.01") / 3})
    assert json.loads(encode(tick))["price"] == "0." + "0" * 2 + "3" * 26
    tick = Tick(**{**raw, "price": Decimal("0.0000000000000000000000000015")})
    assert json.loads(encode(tick))["price"] == "0.0000000000000000000000000015"
    tick = Tick(**{**raw, "price": Decimal("0.00000000000000000000000000015")})
    assert json.loads(encode(tick))["price"] == "0.0000000000000000000000000002"
    wide = Decimal("79228162514.2643375935439503365")  # 30 digits, 19 places: 2^96 and more
    tick = Tick(**{**raw, "price": wide})
    assert json.loads(encode(tick))["price"] == "79228162514.26433759354395034"
    for text in PRECISION_EDGES:  # each built in code is written as the wire holds it
        if Decimal("1E-28") <= Decimal(text) < Decimal("99999999999999.99999999999999"):
            decode(Tick, encode(Tick(**{**raw, "price": Decimal(text)})))
    with pytest.raises(ValidationError, match="out of range"):  # rounds to 1e14
        Tick(**{**raw, "price": Decimal("99999999999999.999999999999999")})
    with pytest.raises(ValidationError, match="greater than zero"):  # rounds to 0
        Tick(**{**raw, "price": Decimal("1E-29")})


def test_every_public_item_of_the_contract_says_what_it_is():
    """The Python side of rust-common's `#![warn(missing_docs)]` on its messages."""
    import inspect

    from services.contract import catalogue, models, subjects, users

    missing = [f"{mod.__name__}.{name}" for mod in (models, subjects, catalogue, users)
               for name, obj in vars(mod).items()
               if not name.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj))
               and getattr(obj, "__module__", "") == mod.__name__ and not (obj.__doc__ or "").strip()]
    assert not missing, missing
