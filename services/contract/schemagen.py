"""Write proto/schemas/<Message>.json from the pydantic models (the source of truth).

    python -m services.contract.schemagen          # rewrite the schema files
    python -m services.contract.schemagen --check  # exit 1 if a file is out of date

tests/test_contract.py runs the check, so the models and the schemas cannot drift.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .models import MESSAGES

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "proto" / "schemas"


def render(name: str) -> str:
    schema = MESSAGES[name].model_json_schema(mode="validation")
    document = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://moonbus.dev/schemas/{name}.json",
        **schema,
    }
    return json.dumps(document, indent=2, sort_keys=False) + "\n"


def expected_files() -> dict[Path, str]:
    return {SCHEMA_DIR / f"{name}.json": render(name) for name in MESSAGES}


def main(argv: list[str]) -> int:
    files = expected_files()
    stale = [p for p, text in files.items() if not p.exists() or p.read_text() != text]
    extra = [p for p in SCHEMA_DIR.glob("*.json") if p not in files]
    if "--check" in argv:
        for p in stale:
            print(f"out of date: {p.relative_to(SCHEMA_DIR.parent.parent)}")
        for p in extra:
            print(f"no model for: {p.relative_to(SCHEMA_DIR.parent.parent)}")
        return 1 if stale or extra else 0
    SCHEMA_DIR.mkdir(parents=True, exist_ok=True)
    for p in stale:
        p.write_text(files[p])
    for p in extra:
        p.unlink()
    print(f"{len(stale)} written, {len(extra)} removed, {len(files)} schemas")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
