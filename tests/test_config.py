"""The config rules are the same in Python and Rust (rust-common/src/config.rs tests)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.common import config
from services.common.config import Section, SystemConfig
from services.contract.models import SYMBOL_PATTERN

ROOT = Path(__file__).resolve().parents[1]


class Risk(Section):
    max_order_notional: str = "0"
    heartbeat_ms: int = 0
    symbols: list[str] = []


def test_env_overrides_are_typed_and_case_insensitive(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text('[risk]\nmax_order_notional = "1000"\nheartbeat_ms = 1000\n')
    cfg = config.load(
        file,
        {
            "MOONBUS__RISK__HEARTBEAT_MS": "250",
            "MOONBUS__RISK__SYMBOLS": '["BTC-USD"]',
            "MOONBUS__RISK__MAX_ORDER_NOTIONAL": '"50"',
            "UNRELATED": "x",
        },
    )
    risk = config.section(cfg, "risk", Risk)
    assert (risk.heartbeat_ms, risk.symbols, risk.max_order_notional) == (250, ["BTC-USD"], "50")


def test_unparsable_value_is_a_string_and_missing_section_is_default(tmp_path: Path) -> None:
    cfg = config.load(ROOT / "moonbus.toml", {"MOONBUS__GATEWAY__HOST": "0.0.0.0"})
    assert cfg["gateway"]["host"] == "0.0.0.0"
    assert config.section({}, "risk", Risk).heartbeat_ms == 0


def test_explicit_missing_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError):
        config.load(tmp_path / "nope.toml", {})
    with pytest.raises(FileNotFoundError):
        config.load(None, {"MOONBUS_CONFIG": str(tmp_path / "nope.toml")})
    monkeypatch.chdir(tmp_path)  # no ./moonbus.toml here: the defaults apply
    assert config.load(None, {}) == {}


def test_typo_in_a_section_is_rejected() -> None:
    with pytest.raises(ValidationError):
        config.section({"risk": {"heartbeat_msec": 5}}, "risk", Risk)


def test_shipped_config_has_valid_symbols() -> None:
    system = config.section(config.load(ROOT / "moonbus.toml", {}), "system", SystemConfig)
    assert system.symbols and all(re.match(SYMBOL_PATTERN, s) for s in system.symbols)
