"""One config file for the whole system, read the same way as rust-common/src/config.rs:

- the file is `$MOONBUS_CONFIG`, else `./moonbus.toml` (missing default file = defaults,
  missing explicit file = error);
- `MOONBUS__<SECTION>__<KEY>=<value>` overrides any key (names case-insensitive); the value
  is read as a TOML value when it parses as one (`10`, `true`, `["A-B"]`, `"x"`), else as a
  plain string.

Each service declares its section as a pydantic model with defaults and calls `section()`.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict

# The checkout the services run from (moonbus.toml, proto/, .moon/ of `make run`).
REPO_ROOT = Path(__file__).resolve().parents[2]

ENV_PREFIX = "MOONBUS__"
S = TypeVar("S", bound=BaseModel)


def _no_float(value: object) -> object:
    # Money in the config is a decimal string ("100"); a TOML float would be inexact.
    if isinstance(value, float):
        raise ValueError('write money as a decimal string, e.g. "100"')
    return value


ConfigMoney = Annotated[Decimal, BeforeValidator(_no_float)]
"""Money in a config section: a decimal string (or an integer), never a float."""


class Section(BaseModel):
    """Base for config sections: unknown keys are errors (a typo must not pass)."""

    model_config = ConfigDict(extra="forbid")


class SystemConfig(Section):
    symbols: list[str] = ["BTC-USD", "ETH-USD", "SOL-USDC"]


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _set_path(table: dict[str, Any], path: list[str], value: Any) -> None:
    current = table
    for key in path[:-1]:
        existing = next((k for k in current if k.lower() == key), key)
        child = current.setdefault(existing, {})
        if not isinstance(child, dict):
            raise ValueError(f"{key} is not a section")
        current = child
    last = path[-1]
    current[next((k for k in current if k.lower() == last), last)] = value


def load(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    environ = os.environ if environ is None else environ
    explicit = path is not None or "MOONBUS_CONFIG" in environ
    file = Path(path or environ.get("MOONBUS_CONFIG", "moonbus.toml"))
    try:
        table = tomllib.loads(file.read_text())
    except FileNotFoundError:
        if explicit:
            raise
        table = {}
    for key in sorted(k for k in environ if k.startswith(ENV_PREFIX)):
        parts = [p.lower() for p in key[len(ENV_PREFIX) :].split("__")]
        if not all(parts):
            raise ValueError(f"bad override variable name {key}")
        _set_path(table, parts, _parse_env_value(environ[key]))
    return table


def section(config: Mapping[str, Any], name: str, model: type[S]) -> S:
    """One section as its model; absent section = the model's defaults."""
    return model.model_validate(config.get(name, {}))
