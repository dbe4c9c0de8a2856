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


@pytest.mark.parametrize(("name", "path"), _vectors("invalid"), ids=lambda v: getattr(v, "stem", v))
def test_invalid_vector_rejected(name: str, path: Path) -> None:
    raw = path.read_text()
    assert not _schema_validator(name).is_valid(json.loads(raw)), "schema accepted it"
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


def test_every_public_item_of_the_contract_says_what_it_is():
    """The Python side of rust-common's `#![warn(missing_docs)]` on its messages."""
    import inspect

    from services.contract import catalogue, models, subjects, users

    missing = [f"{mod.__name__}.{name}" for mod in (models, subjects, catalogue, users)
               for name, obj in vars(mod).items()
               if not name.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj))
               and getattr(obj, "__module__", "") == mod.__name__ and not (obj.__doc__ or "").strip()]
    assert not missing, missing
