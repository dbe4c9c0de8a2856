"""Gateway /api/backtests: the reports services/backtest/report.write made, listed from their
summary.json, each summary and file served as written; only report files, only ids of
[A-Za-z0-9._-]+, no way out of [gateway] backtests_dir (404); the read token like every
/api read; report.html with a CSP that allows its inline style and nothing else.
No bus: these routes read files only (the app runs with bus=None)."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.backtest import report
from services.common.config import REPO_ROOT
from services.gateway.app import create_app
from services.gateway.backtests import FILES
from services.gateway.config import GatewayConfig, backtests_path
from services.gateway.guard import API_CSP, REPORT_CSP

from test_backtest_report import crypto_result
from test_gateway import BASE, LOCAL, TOKEN, EndlessBody, asgi, error_code

READ = "backtest-read-token"


def config(directory: Path) -> dict[str, Any]:
    return {"system": {"symbols": ["AAA-USD"]}, "gateway": {"backtests_dir": str(directory)}}


@pytest.fixture
async def make_client(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    clients: list[httpx.AsyncClient] = []

    def make(directory: Path = tmp_path, read_token: str = "") -> httpx.AsyncClient:
        app = create_app(bus=None, config=config(directory), token=TOKEN, read_token=read_token)
        clients.append(httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE))
        return clients[-1]

    yield make
    for c in clients:
        await c.aclose()


def reports(root: Path) -> dict[str, dict[str, Path]]:
    """Two reports (run-old written before run-new), one unreadable, and clutter to skip."""
    written = {"run-old": report.write(crypto_result(strategy="old"), root / "run-old"),
               "run-new": report.write(crypto_result(days=40, strategy="new"), root / "run-new")}
    os.utime(written["run-old"]["summary.json"], (1_700_000_000, 1_700_000_000))
    os.utime(written["run-new"]["summary.json"], (1_700_000_100, 1_700_000_100))
    (root / "broken").mkdir()
    (root / "broken" / "summary.json").write_text("{not json")
    (root / "empty").mkdir()  # no summary.json: not a report (yet)
    (root / "notes.txt").write_text("not a directory")
    return written


async def test_lists_and_serves_past_reports(make_client, tmp_path: Path) -> None:
    written = reports(tmp_path)
    c = make_client()
    r = await c.get("/api/backtests")
    assert r.status_code == 200
    listed = r.json()
    assert [b["id"] for b in listed["backtests"]] == ["run-new", "run-old"]  # newest first
    assert listed["problems"][0]["id"] == "broken" and "summary.json" in listed["problems"][0]["problem"]
    new = json.loads(written["run-new"]["summary.json"].read_text())
    assert listed["backtests"][0] == {
        "id": "run-new", "created": "2023-11-14T22:15:00Z", "strategy": "new", "symbols": ["AAA-USD", "BBB-USD"],
        "interval": "1d", "start": new["start"], "end": new["end"], "return_pct": new["return_pct"],
        "sharpe": new["sharpe"], "max_drawdown_pct": new["max_drawdown_pct"], "trades": 1}

    r = await c.get("/api/backtests/run-old")
    assert (r.status_code, r.headers["content-type"]) == (200, "application/json")
    assert r.content == written["run-old"]["summary.json"].read_bytes() and r.json()["strategy"] == "old"
    for name, media_type in FILES.items():
        r = await c.get(f"/api/backtests/run-new/{name}")
        assert (r.status_code, r.headers["content-type"]) == (200, media_type), name
        assert r.content == written["run-new"][name].read_bytes(), name
        assert r.headers["content-security-policy"] == (REPORT_CSP if name == "report.html" else API_CSP), name
        assert r.headers["x-content-type-options"] == "nosniff"
    assert "script" not in REPORT_CSP and "default-src 'none'" in REPORT_CSP


async def test_anything_but_a_report_file_is_404(make_client, tmp_path: Path) -> None:
    reports(tmp_path)
    secret = tmp_path.parent / f"{tmp_path.name}-outside"
    report.write(crypto_result(strategy="outside"), secret)
    (tmp_path / "linked").symlink_to(secret)  # a report outside backtests_dir, through a symlink
    (tmp_path / "run-new" / "trades.csv").unlink()
    (tmp_path / "run-new" / "trades.csv").symlink_to(secret / "trades.csv")
    c = make_client()
    for path in ("/api/backtests/nope", "/api/backtests/nope/report.html", "/api/backtests/empty",
                 "/api/backtests/broken/report.html", "/api/backtests/run-new/summary2.json",
                 "/api/backtests/run-new/report.pdf", "/api/backtests/run-new/trades.csv",
                 "/api/backtests/linked", "/api/backtests/linked/report.html", "/api/backtests/a%20b",
                 "/api/backtests/..%2Frun-new/report.html", "/api/backtests/%2E%2E/report.html",
                 "/api/backtests/run-new/..%2F..%2Fetc%2Fpasswd", "/api/backtests/notes.txt"):
        r = await c.get(path)
        assert (r.status_code, error_code(r)) == (404, "not_found"), path
    (tmp_path / "summary.json").write_text("{}")  # the directory itself is no report: "." is no id
    app = create_app(bus=None, config=config(tmp_path), token=TOKEN, read_token="")
    for path in ("/api/backtests/.", "/api/backtests/..", "/api/backtests/../report.html", "/api/backtests/./report.html",
                 f"/api/backtests/../{tmp_path.name}-outside/report.html", "/api/backtests/run-new/../../x/report.png"):
        status, _, body = await asgi(app, "GET", path, LOCAL, EndlessBody())  # the raw path, not normalised
        assert status == 404 and b"outside" not in body, path
    # what is there is still served
    assert (await c.get("/api/backtests/run-new/trades.json")).status_code == 200


async def test_an_id_too_long_for_the_file_system_is_404(make_client, tmp_path: Path) -> None:
    """An id of 5000 characters made the file system refuse the path (ENAMETOOLONG): a 500.
    No such report: 404, with the id cut short in the message."""
    reports(tmp_path)
    c = make_client()
    for path in ("/api/backtests/" + "A" * 5000, "/api/backtests/" + "A" * 5000 + "/report.html",
                 "/api/backtests/" + "A" * 300):
        r = await c.get(path)
        assert (r.status_code, error_code(r)) == (404, "not_found"), path[:40]
        assert len(r.json()["error"]["message"]) < 200


async def test_reads_need_the_read_token_when_one_is_set(make_client, tmp_path: Path) -> None:
    reports(tmp_path)
    c = make_client(read_token=READ)
    paths = ("/api/backtests", "/api/backtests/run-new", "/api/backtests/run-new/report.html")
    for path in paths:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Cookie": "moonbus_read=forged"}):
            r = await c.get(path, headers=headers)
            assert (r.status_code, error_code(r)) == (401, "unauthorized"), (path, headers)
        for token in (READ, TOKEN):
            assert (await c.get(path, headers={"Authorization": f"Bearer {token}"})).status_code == 200, path
    r = await c.delete("/api/backtests/run-new", headers={"Authorization": f"Bearer {READ}"})
    assert r.status_code == 401  # the read token never writes (and there is nothing to write)


async def test_no_directory_yet_is_an_empty_list(make_client, tmp_path: Path) -> None:
    c = make_client(tmp_path / "not-created")
    r = await c.get("/api/backtests")
    assert (r.status_code, r.json()) == (200, {"backtests": [], "problems": []})
    assert (await c.get("/api/backtests/run-new")).status_code == 404


def test_the_default_directory_is_under_the_checkout() -> None:
    assert backtests_path(GatewayConfig()) == REPO_ROOT / ".moon" / "backtests"
    assert backtests_path(GatewayConfig(backtests_dir="/srv/reports")) == Path("/srv/reports")
    assert backtests_path(GatewayConfig(backtests_dir="runs")) == REPO_ROOT / "runs"
