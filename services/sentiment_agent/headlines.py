"""The headline replay file: JSON Lines, one headline per line.

    {"title": "Bitcoin surges past $100,000 as ETF inflows hit a record", "symbols": ["BTC-USD"]}

- `title`: the headline text (non-empty);
- `symbols`: the canonical symbols (`BASE-QUOTE`) the headline is about (at least one).

Blank lines are skipped; unknown keys are ignored (room for `source`, `ts`, ...);
anything else is an error naming the line, so a broken file fails at start-up.
The default file is data/headlines.jsonl.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.contract.models import Symbol

REPO_ROOT = Path(__file__).resolve().parents[2]


class Headline(BaseModel):
    model_config = ConfigDict(extra="ignore")

    title: Annotated[str, Field(min_length=1, max_length=1000)]
    symbols: Annotated[list[Symbol], Field(min_length=1)]


def resolve(path: str | Path) -> Path:
    """A relative path is taken from the working directory, else from the repo root."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    return REPO_ROOT / p


def load_headlines(path: str | Path) -> list[Headline]:
    file = resolve(path)
    items = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(Headline.model_validate_json(line))
        except ValidationError as e:
            raise ValueError(f"{file}:{number}: bad headline: {e.errors()[0]['msg']}") from None
    if not items:
        raise ValueError(f"{file}: no headlines")
    return items
