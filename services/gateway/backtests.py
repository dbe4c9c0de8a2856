"""Past backtest reports (/api/backtests): the directories services/backtest/report.write
made under [gateway] backtests_dir, one per run, named by their id. Reads like every other
/api route (the read token when one is set: guard.py); no bus needed.

Only ids of `[A-Za-z0-9._-]+` (not `.` or `..`) and only the report's own files are
served; anything else, or a path that resolves outside the directory (a symlink), is 404."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, Response

from services.common.bus import ApiError

from .config import backtests_path
from .routes import Gw

router = APIRouter(prefix="/api/backtests")
ID = re.compile(r"[A-Za-z0-9._-]+")
SUMMARY = "summary.json"
FILES = {
    "report.html": "text/html; charset=utf-8",
    "report.png": "image/png",
    "trades.csv": "text/csv; charset=utf-8",
    "trades.json": "application/json",
    "equity.csv": "text/csv; charset=utf-8",
}
LISTED = ("strategy", "symbols", "interval", "start", "end", "return_pct", "sharpe", "max_drawdown_pct", "trades")
NOT_FOUND = {404: {"description": "no such backtest or file"}}


def report_file(root: Path, backtest_id: str, name: str) -> Path:
    """The file `name` of report `backtest_id`, or not_found."""
    root = root.resolve()
    path = (root / backtest_id / name).resolve() if ID.fullmatch(backtest_id) and backtest_id not in (".", "..") else None
    try:
        found = path is not None and path.is_relative_to(root) and path.is_file()
    except OSError:  # a name too long for the file system (ENAMETOOLONG), ...: no such report either
        found = False
    if not found:
        shown = backtest_id if len(backtest_id) <= 80 else backtest_id[:80] + "..."
        raise ApiError("not_found", f"no backtest {shown!r} with a {name} (see GET /api/backtests)")
    assert path is not None
    return path


def entry(directory: Path) -> dict[str, Any]:
    """One line of the list, from the report's summary.json."""
    summary_path = directory / SUMMARY
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    if not isinstance(summary, dict):
        raise ValueError("not a JSON object")
    created = datetime.fromtimestamp(summary_path.stat().st_mtime, UTC)
    return {"id": directory.name, "created": created.isoformat().replace("+00:00", "Z"),
            **{key: summary.get(key) for key in LISTED}}


@router.get("")
async def list_backtests(gw: Gw) -> JSONResponse:
    """Every report under [gateway] backtests_dir, newest first: id, created (when its
    summary.json was written), strategy, symbols, interval, start, end, return_pct, sharpe,
    max_drawdown_pct, trades. A directory whose summary.json is unreadable is in `problems`."""
    root = backtests_path(gw.cfg)
    found, problems = [], []
    for directory in sorted(root.iterdir()) if root.is_dir() else ():
        if not (directory.is_dir() and ID.fullmatch(directory.name) and (directory / SUMMARY).is_file()):
            continue
        try:
            found.append(entry(directory))
        except (OSError, ValueError) as e:  # JSONDecodeError is a ValueError
            problems.append({"id": directory.name, "problem": f"{SUMMARY}: {e}"})
    found.sort(key=lambda b: b["created"], reverse=True)
    return JSONResponse({"backtests": found, "problems": problems})


@router.get("/{backtest_id}", responses=NOT_FOUND)
async def backtest_summary(gw: Gw, backtest_id: str) -> Response:
    """The report's summary.json (the metrics, strategy, params, symbols, interval)."""
    return FileResponse(report_file(backtests_path(gw.cfg), backtest_id, SUMMARY), media_type="application/json")


@router.get("/{backtest_id}/{name}", responses=NOT_FOUND)
async def backtest_file(gw: Gw, backtest_id: str, name: str) -> Response:
    """One file of the report: report.html (self-contained), report.png, trades.csv,
    trades.json or equity.csv."""
    if name not in FILES:
        raise ApiError("not_found", f"a backtest has no file {name!r}; there are {', '.join(FILES)}")
    return FileResponse(report_file(backtests_path(gw.cfg), backtest_id, name), media_type=FILES[name])
