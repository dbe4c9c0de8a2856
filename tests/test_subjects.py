"""The subjects in three places cannot drift: rust-common/src/subjects.rs, the Python module
services/contract/subjects.py and the tables of proto/SUBJECTS.md. And no Python service spells
a subject outside the module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from services.contract import subjects as S
from services.contract.models import MESSAGES

ROOT = Path(__file__).resolve().parents[1]
RUST = (ROOT / "rust-common" / "src" / "subjects.rs").read_text()
DOC = (ROOT / "proto" / "SUBJECTS.md").read_text()


def rust_consts() -> dict[str, str]:
    return dict(re.findall(r'pub const ([A-Z0-9_]+): &str = "([^"]*)";', RUST))


def rust_builders() -> dict[str, tuple[list[str], str]]:
    """name -> (parameter names, format string) of every `pub fn ... -> String { format!(..) }`."""
    found = {}
    for name, params, body in re.findall(r"pub fn (\w+)\(([^)]*)\) -> String \{\s*format!\(\"([^\"]*)\"\)", RUST):
        found[name] = ([p.split(":")[0].strip() for p in params.split(",") if p.strip()], body)
    return found


def doc_patterns() -> set[str]:
    """The subject patterns of SUBJECTS.md's tables (first column), `<token>` as `*`."""
    patterns = set()
    for line in DOC.splitlines():
        if not line.startswith("| `"):
            continue
        cell = line.split("|")[1]
        full = ""
        for code in re.findall(r"`([^`]+)`", cell):
            if code.startswith(".") and full:  # `md.api.monitor.start` / `.stop`: the last token replaced
                patterns.add(full.rsplit(".", 1)[0] + code)
            elif "." in code:
                full = code
                patterns.add(code)
    return {re.sub(r"<[a-z_]+>", "*", p) for p in patterns}


def test_parsers_found_the_rust_subjects() -> None:
    assert len(rust_consts()) >= 20 and "ACCOUNT" in rust_consts()
    assert {"tick", "bar", "book", "alert", "feed_status", "verdict", "exec_report", "orders_submit",
            "errors"} <= set(rust_builders())
    assert len(doc_patterns()) >= 25


@pytest.mark.parametrize("name,value", sorted(rust_consts().items()))
def test_every_rust_constant_is_in_python(name: str, value: str) -> None:
    assert getattr(S, name, None) == value, f"subjects.py {name} != subjects.rs {value!r}"


@pytest.mark.parametrize("name", sorted(rust_builders()))
def test_every_rust_builder_is_in_python(name: str) -> None:
    params, template = rust_builders()[name]
    builder = getattr(S, name, None)
    assert callable(builder), f"subjects.py has no {name}()"
    assert builder(*(f"{{{p}}}" for p in params)) == template


def test_parse_order_subject_and_last_token_as_in_rust() -> None:
    assert S.parse_order_subject("orders.submit.trading.BTC-USD") == (S.OrderKind.SUBMIT, "trading", "BTC-USD")
    assert S.parse_order_subject("orders.cancel.operator.ETH-USD") == (S.OrderKind.CANCEL, "operator", "ETH-USD")
    for bad in ("orders.submit.BTC-USD", "orders.amend.a.B-C", "orders.submit.a.B-C.x", "md.tick.sim.BTC-USD"):
        assert S.parse_order_subject(bad) is None
    assert S.last_token("exec.report.BTC-USD") == "BTC-USD" and S.last_token("x") == "x"


def test_subjects_md_and_the_module_name_the_same_subjects() -> None:
    documented, module = doc_patterns(), set(S.PATTERNS)
    assert documented - module == set(), "in proto/SUBJECTS.md but not in services/contract/subjects.py PATTERNS"
    assert module - documented == set(), "in subjects.py PATTERNS but not in proto/SUBJECTS.md's tables"


def test_every_rust_subject_is_documented() -> None:
    documented = doc_patterns()
    for name, value in rust_consts().items():
        if "." in value and not value.endswith(">"):
            assert value in documented, f"subjects.rs {name} = {value!r} is not in proto/SUBJECTS.md"
    for name, (params, template) in rust_builders().items():
        pattern = re.sub(r"\{[a-z_]+\}", "*", template)
        assert pattern in documented, f"subjects.rs {name}() = {template!r} is not in proto/SUBJECTS.md"


def _endpoints() -> list[S.Endpoint]:
    found = [v for v in vars(S).values() if isinstance(v, S.Endpoint)]
    return found + [S.risk_killswitch_api("operator"), S.risk_limits_api("operator")]


def test_every_api_subject_has_a_typed_endpoint() -> None:
    api = {p for p in S.PATTERNS if ".api." in p}
    served = {e.subject for e in _endpoints()} | {S.RISK_KILLSWITCH, S.RISK_LIMITS}
    assert api <= served
    for endpoint in _endpoints():
        assert issubclass(endpoint.request_model, BaseModel) and issubclass(endpoint.reply_model, BaseModel)
        assert endpoint.reply_model.__name__ in MESSAGES, endpoint


def test_the_documented_messages_of_each_endpoint() -> None:
    """The request -> reply names in SUBJECTS.md's row of each endpoint are the endpoint's models."""
    rows = {}
    for line in DOC.splitlines():
        if line.startswith("| `") and ".api." in line:
            rows[line.split("|")[1]] = line
    for endpoint in _endpoints():
        subject = re.sub(r"\.(operator)$", ".<caller>", endpoint.subject)
        row = next((r for cell, r in rows.items() if f"`{subject}`" in cell
                    or subject.rsplit(".", 1)[0] + "." in cell and f"`.{S.last_token(subject)}`" in cell), None)
        assert row is not None, endpoint.subject
        if endpoint.request_model is not S.VersionRequest:
            assert f"[{endpoint.request_model.__name__}]" in row, (endpoint.subject, row)
        assert f"-> [{endpoint.reply_model.__name__}]" in row, (endpoint.subject, row)


SUBJECT_LIKE = re.compile(r"^(md|risk|exec|orders|agent|errors)\.[A-Za-z0-9_*>.-]*$")
PREFIX_LIKE = re.compile(r"^(md|risk|exec|orders|agent|errors)\.")


def _literals(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and SUBJECT_LIKE.match(node.value):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
        elif isinstance(node, ast.JoinedStr) and node.values:
            first = node.values[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str) and PREFIX_LIKE.match(first.value):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: f{first.value!r}...")
    return found


def test_no_subject_literal_outside_the_module() -> None:
    module = ROOT / "services" / "contract" / "subjects.py"
    found = [hit for path in sorted((ROOT / "services").rglob("*.py")) if path != module for hit in _literals(path)]
    assert found == [], "use services/contract/subjects.py:\n" + "\n".join(found)
