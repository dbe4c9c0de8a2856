"""Distributed backtest sweeps: the backtest workers (`python -m services.backtest`, user
`backtest`, separate processes) on the session's real nats-server, datasets in the object
store `backtest-data`.

- a small grid over 2 workers returns every cell once, with the numbers of in-process runs;
- a worker killed mid-sweep: its runs come back from the other (retried once after the timeout);
- a bad dataset hash, a forged object, a bad request: error replies with the reason, an event
  on errors.backtest, and the worker carries on;
- the `backtest` credential may serve its queue group and read datasets, nothing else.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.backtest import data, datastore, sweep
from services.backtest.datastore import DatasetError, DatasetRef
from services.common.bus import flush
from services.contract import subjects as S
from services.contract.models import BacktestReply, BacktestRequest, ErrorEvent, ErrorReply, encode
from services.devstack.natsserver import REPO_ROOT, NatsServer

SAMPLE = REPO_ROOT / "data" / "backtest" / "BTC-USD.csv"
NOT_THERE = "0" * 64


class Workers:
    """Backtest worker processes as user `backtest`; stopped at teardown."""

    def __init__(self, server: NatsServer, tmp: Path) -> None:
        self.server = server
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, count: int, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "MOONBUS_PW"))}
        env |= {**self.server.env_for("backtest"), "PYTHONUNBUFFERED": "1",
                "MOONBUS_CONFIG": str(REPO_ROOT / "moonbus.toml")}
        for i in range(count):
            log = open(self.tmp / f"worker-{len(self.procs)}.log", "wb")
            self.procs.append(subprocess.Popen([sys.executable, "-m", "services.backtest", *args], cwd=REPO_ROOT, env=env,
                                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    async def ready(self, nc, count: int, timeout: float = 30.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while await sweep.count_workers(nc, 0.3) < count:
            dead = [p.args for p in self.procs if p.poll() is not None]
            assert not dead and asyncio.get_running_loop().time() < deadline, f"workers not up: {self.logs()}"

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.tmp.glob("worker-*.log")))

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
async def workers(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Workers]:
    w = Workers(nats_server, tmp_path)
    try:
        yield w
    finally:
        await asyncio.to_thread(w.stop)


async def upload_sample(operator) -> DatasetRef:
    return await datastore.upload(operator, SAMPLE)


def grid_requests(ref: DatasetRef, tag: str) -> tuple[list[sweep.Axis], list[BacktestRequest], list[dict]]:
    axes = [sweep.parse_axis("fast=5:15:5"), sweep.parse_axis("slow=10,30")]
    grid = sweep.make_grid(axes, {}, {"strategy": "ma_crossover"})
    requests = [sweep.make_request(f"{tag}-{i}", [ref], cell, strategy="ma_crossover")
                for i, cell in enumerate(grid.cells)]
    return axes, requests, grid.cells


# ---- the grid and the windows (no bus) --------------------------------------------------------


def test_axes_aliases_lists_and_skipped_cells():
    assert sweep.parse_axis("fast=5:50:5") == sweep.Axis("ma_fast", tuple(range(5, 55, 5)))
    assert sweep.parse_axis("slow=20,50,100").values == (20, 50, 100)
    assert sweep.parse_axis("momentum_threshold_pct=0.1:0.3:0.1").values == (0.1, 0.2, 0.3)
    for bad, says in [("nope=1:2:1", "not a [trading_agent] key"), ("fast=5:1:1", "start <= stop"),
                      ("fast", "key=start:stop:step"), ("fast=1:2:0", "step above 0")]:
        with pytest.raises(sweep.SweepError, match=says.replace("[", r"\[").replace("]", r"\]")):
            sweep.parse_axis(bad)
    grid = sweep.make_grid([sweep.parse_axis("fast=10:30:10"), sweep.parse_axis("slow=20")], {"order_usd": "50"})
    assert grid.cells == [{"order_usd": "50", "ma_fast": 10, "ma_slow": 20}]
    assert [c["ma_fast"] for c, _ in grid.skipped] == [20, 30]
    assert all("must be below ma_slow" in why for _, why in grid.skipped)


def test_train_test_and_walk_forward_windows():
    times = list(range(100, 200))
    train, test = sweep.train_test_windows(times, 0.7)
    assert (train.start_ts, train.end_ts, train.bars) == (None, 170, 70)
    assert (test.start_ts, test.end_ts, test.bars) == (170, None, 30)
    folds = sweep.walk_forward_windows(times, 3)  # 4 segments of 25 bars
    assert [(a.start_ts, a.end_ts, b.start_ts, b.end_ts) for a, b in folds] == [
        (100, 125, 125, 150), (125, 150, 150, 175), (150, 175, 175, None)]
    assert sum(b.bars for _, b in folds) == 75
    with pytest.raises(sweep.SweepError):
        sweep.train_test_windows(times, 1.5)


# ---- the object store -------------------------------------------------------------------------


async def test_datasets_are_content_addressed_and_checked(connect, tmp_path):
    operator, worker = await connect("operator"), await connect("backtest")
    ref = await upload_sample(operator)
    assert ref.name == ref.sha256 == datastore.sha256_hex(SAMPLE.read_bytes())
    assert await datastore.upload(operator, SAMPLE) == ref  # already there: not stored twice
    assert await datastore.fetch(worker, ref.name, ref.sha256) == SAMPLE.read_bytes()
    with pytest.raises(DatasetError) as missing:
        await datastore.fetch(worker, NOT_THERE, NOT_THERE)
    assert missing.value.code == "dataset_missing"
    with pytest.raises(DatasetError) as wrong:
        await datastore.fetch(worker, ref.name, NOT_THERE)
    assert wrong.value.code == "dataset_corrupt"
    # An object whose bytes are not its name's hash (a forgery by a writer): refused when read.
    forged = tmp_path / "forged.csv"
    forged.write_bytes(SAMPLE.read_bytes().replace(b"40000.00", b"99999.99", 1))
    other = await datastore.upload(operator, forged)
    with pytest.raises(DatasetError, match="not the requested"):
        await datastore.fetch(worker, other.name, ref.sha256)


# ---- the permissions of the backtest credential -------------------------------------------------


async def test_the_backtest_credential_serves_its_queue_group_and_nothing_else(connect):
    thief, operator = await connect("backtest"), await connect("operator")
    ref = await upload_sample(operator)
    # Its own: the queue group, dataset reads, its error subject.
    await thief.subscribe(S.BACKTEST_RUN, queue=S.BACKTEST_QUEUE)
    await datastore.fetch(thief, ref.name, ref.sha256)
    await thief.publish(S.errors("backtest"), b"{}")
    await flush(thief)
    await asyncio.sleep(0.2)
    assert thief.permission_errors() == []
    # A plain subscription would see every sweep's requests; orders, reports, forged subjects.
    await thief.subscribe(S.BACKTEST_RUN)
    await thief.wait_for_permission_error(f'subscription to "{S.BACKTEST_RUN}"')
    await thief.subscribe(S.ALL_REPORTS)
    await thief.wait_for_permission_error(f'subscription to "{S.ALL_REPORTS}"')
    for subject in (S.orders_submit("trading", "BTC-USD"), S.orders_submit("backtest", "BTC-USD"),
                    S.tick("sim", "BTC-USD"), S.ACCOUNT, S.errors("risk"), S.signal("trading", "BTC-USD"),
                    S.kv_subject(S.KV_KILLSWITCH), S.object_meta(S.BACKTEST_DATA_BUCKET, "eA"),
                    S.object_chunks(S.BACKTEST_DATA_BUCKET, "x")):
        await thief.publish(subject, b'{"forged": true}')
        await thief.wait_for_permission_error(subject)
    # EXEC, ORDERS and the KV bucket: no reads.
    for stream in ("EXEC", "ORDERS", "KV_moonbus"):
        with pytest.raises(Exception):
            await thief.request(f"$JS.API.DIRECT.GET.{stream}", b'{"seq": 1}', timeout=0.5)
        await thief.wait_for_permission_error(f"$JS.API.DIRECT.GET.{stream}")
    # Nothing it sent landed in the object store.
    assert await datastore._meta(operator, "x", 2) is None


async def test_only_the_backtest_workers_may_join_the_queue_group(connect):
    for user in ("operator", "gateway", "trading-agent", "market-data"):
        nc = await connect(user)
        await nc.subscribe(S.BACKTEST_RUN, queue=S.BACKTEST_QUEUE)
        await nc.wait_for_permission_error(f'subscription to "{S.BACKTEST_RUN}"')


# ---- the workers ----------------------------------------------------------------------------------


async def test_bad_requests_and_bad_datasets_are_answered_and_reported(connect, workers):
    operator = await connect("operator")
    errors = await operator.collect(S.errors("backtest"))
    workers.start(1)
    await workers.ready(operator, 1)
    ref = await upload_sample(operator)
    # A hash nothing is stored under; a dataset whose bytes are not the hash.
    for name, digest, code in [(NOT_THERE, NOT_THERE, "dataset_missing"), (ref.name, NOT_THERE, "dataset_corrupt")]:
        request = sweep.make_request(f"bad-{code}", [DatasetRef(name, digest, "x.csv", 0)], {"ma_fast": 5})
        reply = BacktestReply.model_validate_json(
            (await operator.request(S.BACKTEST_RUN, encode(request), timeout=10)).data)
        assert reply.summary is None and reply.error.code == code, reply
        assert reply.run_id == f"bad-{code}" and reply.params == {"ma_fast": 5}
        event = ErrorEvent.model_validate_json((await asyncio.wait_for(errors.get(), 5)).data)
        assert event.service == "backtest" and code in event.reason
    # Not a request at all.
    answer = await operator.request(S.BACKTEST_RUN, b'{"run_id": "x", "datasetz": []}', timeout=10)
    assert ErrorReply.model_validate_json(answer.data).error.code == "bad_request"
    assert "bad_request" in ErrorEvent.model_validate_json((await asyncio.wait_for(errors.get(), 5)).data).reason
    # And it carries on.
    assert workers.procs[0].poll() is None


async def test_bad_data_is_an_error_with_file_and_row(connect, workers, tmp_path):
    operator = await connect("operator")
    workers.start(1)
    await workers.ready(operator, 1)
    broken = tmp_path / "ETH-USD.csv"
    broken.write_text("Date,Open,High,Low,Close,Volume\n2025-01-01 00:00:00,1,2,0.5,1.5,3\n"
                      "2025-01-01 01:00:00,1,2,0.5,lots,3\n")
    ref = await datastore.upload(operator, broken)
    request = sweep.make_request("bad-data", [ref], {})
    reply = BacktestReply.model_validate_json((await operator.request(S.BACKTEST_RUN, encode(request), timeout=10)).data)
    assert reply.error.code == "bad_data" and reply.error.message.startswith("ETH-USD.csv:3:"), reply.error


async def test_one_process_keeps_n_workers_as_make_run_starts_them(connect, workers):
    operator = await connect("operator")
    workers.start(1, "--workers", "2")
    await workers.ready(operator, 2)
    children = subprocess.run(["pgrep", "-P", str(workers.procs[0].pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 2
    os.kill(int(children[0]), signal.SIGKILL)  # a worker dies: another takes its place
    await asyncio.sleep(1)
    await workers.ready(operator, 2)
    after = subprocess.run(["pgrep", "-P", str(workers.procs[0].pid)], capture_output=True, text=True).stdout.split()
    assert len(after) == 2 and children[0] not in after
    await asyncio.to_thread(workers.stop)
    assert await sweep.count_workers(operator, 0.5) == 0, "SIGTERM stops every worker"


# ---- sweeps (the engine) --------------------------------------------------------------------------


def local_summaries(cells: list[dict]) -> list[dict]:
    """The same runs in this process: the numbers a sweep must reproduce."""
    from services.backtest.worker import run_backtest

    series = data.load(SAMPLE)
    return [run_backtest(series, sweep.make_request("local", [DatasetRef("n", NOT_THERE, SAMPLE.name, 0)], cell,
                                                    strategy="ma_crossover")) for cell in cells]


async def test_a_sweep_over_two_workers_returns_every_cell_once_with_the_local_numbers(connect, workers):
    operator = await connect("operator")
    workers.start(2)
    await workers.ready(operator, 2)
    ref = await upload_sample(operator)
    axes, requests, cells = grid_requests(ref, "two")
    # Three times the grid (18 runs): the queue group picks a worker at random per run, so that
    # both get some (all 18 on one: a 1 in 131072 chance).
    requests = [r.model_copy(update={"run_id": f"{r.run_id}-{k}"}) for k in range(3) for r in requests]
    cells = cells * 3
    seen: list[str] = []
    results = await sweep.fan_out(operator, requests, concurrency=4, timeout=60,
                                  on_result=lambda r: seen.append(r.run_id))
    assert sorted(seen) == sorted(r.run_id for r in requests)  # each once
    assert [r.error for r in results] == [None] * len(requests), results
    assert [r.params for r in results] == cells
    assert [r.summary for r in results] == local_summaries(cells)
    assert len({r.worker for r in results}) == 2, "both workers ran some"


async def test_a_worker_killed_mid_sweep_has_its_runs_retried_on_the_other(connect, workers, tmp_path):
    operator = await connect("operator")
    workers.start(2)
    await workers.ready(operator, 2)
    ref = await upload_sample(operator)
    axes, requests, cells = grid_requests(ref, "kill")
    # 12 runs all in flight at once: the queue group spreads them at random over both workers (all
    # 12 on one: a 1 in 4096 chance). The victim is frozen before the sweep and killed once the
    # server has routed every request (a flush after they are all sent), so every run it took is
    # lost with it, and the retries can only reach the survivor, however slow its first answer.
    requests = requests + [r.model_copy(update={"run_id": r.run_id + "-b"}) for r in requests]
    cells = cells * 2
    done: list[sweep.RunResult] = []
    victim = workers.procs[1]
    os.killpg(victim.pid, signal.SIGSTOP)
    sent_before = operator.stats["out_msgs"]
    sweeping = asyncio.create_task(sweep.fan_out(operator, requests, concurrency=len(requests), timeout=8,
                                                 on_result=done.append))
    while operator.stats["out_msgs"] < sent_before + len(requests):
        await asyncio.sleep(0.01)
    await flush(operator)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    results = await sweeping
    assert [r.error for r in results] == [None] * len(requests), results
    assert Counter(r.run_id for r in done) == Counter(r.run_id for r in requests)
    retried = [r for r in results if r.attempts == 2]
    assert retried, "some runs were lost with the killed worker and sent again"
    assert all(not r.worker.endswith(f":{victim.pid}") for r in results), results
    assert [r.summary for r in results] == local_summaries(cells)


async def test_a_run_nobody_serves_is_tried_twice_then_reported_lost(connect):
    operator = await connect("operator")
    request = sweep.make_request("orphan", [DatasetRef(NOT_THERE, NOT_THERE, "x.csv", 0)], {})
    [result] = await sweep.fan_out(operator, [request], concurrency=1, timeout=1)
    assert result.summary is None and result.attempts == 2
    assert result.error == "lost: no backtest worker answered (no responders) (2 attempts)"


async def test_sweep_files_rank_and_heatmap(tmp_path):
    axes = [sweep.parse_axis("fast=5:10:5"), sweep.parse_axis("slow=20,30")]
    results = [sweep.RunResult(f"r{i}", {"ma_fast": f, "ma_slow": s}, {"sharpe": sharpe, "return_pct": 1.0})
               for i, (f, s, sharpe) in enumerate([(5, 20, 0.5), (10, 20, None), (5, 30, 1.5), (10, 30, -1.0)])]
    results.append(sweep.RunResult("r4", {"ma_fast": 10, "ma_slow": 20}, error="run_failed: boom"))
    outcome = sweep.write_sweep(results, axes, "sharpe", tmp_path, "test")
    assert [r.run_id for r in outcome.ranked] == ["r2", "r0", "r3", "r1", "r4"]
    assert outcome.best.run_id == "r2"
    table = json.loads(outcome.files["table_json"].read_text())
    assert [row["run_id"] for row in table] == ["r2", "r0", "r3", "r1", "r4"] and table[-1]["error"]
    assert outcome.files["table_csv"].read_text().splitlines()[0].startswith("run_id,ma_fast,ma_slow,sharpe")
    assert sweep.heat(results, *axes, "sharpe") == [[0.5, None], [1.5, -1.0]]
    assert outcome.files["heatmap_png"].read_bytes()[:4] == b"\x89PNG"
    assert "<table>" in outcome.files["heatmap_html"].read_text()


def moon(server: NatsServer, *args: str) -> subprocess.CompletedProcess[str]:
    """`moon backtest ...` as the operator, as a user types it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATS_")} | {"COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "services.cli", "--server", server.url, "--user", "operator",
                           "--password", server.credentials["operator"], "backtest", *args],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


async def test_moon_backtest_sweep_with_train_test_split(nats_server, connect, workers, tmp_path):
    operator = await connect("operator")
    workers.start(2)
    await workers.ready(operator, 2)
    run = await asyncio.to_thread(moon, nats_server, str(SAMPLE), "--strategy", "ma_crossover", "--sweep",
                                  "fast=5:15:5", "slow=10,30", "--train", "0.7", "--out", str(tmp_path / "out"))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 of 6 cells skipped" in run.stdout  # fast 10 and 15 with slow 10: ma_fast must be below ma_slow
    [out] = (tmp_path / "out").iterdir()
    table = json.loads((out / "sweep.json").read_text())
    assert len(table) == 4 and all(not row["error"] for row in table)
    assert {(row["ma_fast"], row["ma_slow"]) for row in table} == {(5, 10), (5, 30), (10, 30), (15, 30)}
    split = json.loads((out / "out_of_sample.json").read_text())
    assert split["best_params"] == {k: table[0][k] for k in ("ma_fast", "ma_slow")}  # the best in-sample
    assert split["in_sample"]["bars"] == 1050 and split["out_of_sample"]["bars"] == 450
    assert (out / "heatmap.png").read_bytes()[:4] == b"\x89PNG" and (out / "sweep.csv").exists()


async def test_moon_backtest_walk_forward_and_a_local_run(nats_server, connect, workers, tmp_path):
    operator = await connect("operator")
    workers.start(2)
    await workers.ready(operator, 2)
    run = await asyncio.to_thread(moon, nats_server, str(SAMPLE), "--strategy", "ma_crossover", "--sweep",
                                  "fast=5,10", "--param", "slow=40", "--walk-forward", "3", "--metric", "return_pct",
                                  "--out", str(tmp_path / "wf"), "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    [out] = (tmp_path / "wf").iterdir()
    assert json.loads(run.stdout)["mode"] == "walk_forward"  # --json: the result alone
    folds = json.loads((out / "walk_forward.json").read_text())
    assert [f["fold"] for f in folds] == [1, 2, 3]
    assert [(f["in_sample"]["bars"], f["out_of_sample"]["bars"]) for f in folds] == [(375, 375)] * 3
    assert all(f["best_params"]["ma_slow"] == 40 for f in folds)
    assert all((out / f"fold-{i}" / "sweep.csv").exists() for i in (1, 2, 3))
    # No --sweep: one run here, its report where the gateway looks (--out here).
    local = await asyncio.to_thread(moon, nats_server, str(SAMPLE), "--strategy", "ma_crossover", "-p", "fast=10",
                                    "-p", "slow=40", "--out", str(tmp_path / "one"))
    assert local.returncode == 0, local.stdout + local.stderr
    [report] = (tmp_path / "one").iterdir()
    summary = json.loads((report / "summary.json").read_text())
    assert summary["params"]["ma_fast"] == 10 and summary["params"]["ma_slow"] == 40
    assert {"report.html", "report.png", "trades.csv"} <= {p.name for p in report.iterdir()}
    assert "sharpe" in local.stdout and str(report / "report.html") in local.stdout


def test_moon_backtest_says_what_is_wrong(nats_server, tmp_path):
    for args, says in [(["nope.csv"], "no such file"), ([str(SAMPLE), "slow=10"], "not a file"),
                       ([str(SAMPLE), "--sweep", "speed=1:2:1"], "not a [trading_agent] key"),
                       ([str(SAMPLE), "--train", "0.7"], "add --sweep")]:
        run = moon(nats_server, *args, "--out", str(tmp_path))
        assert run.returncode == 1 and says in run.stderr, (args, run.stderr)
