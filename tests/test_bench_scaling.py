"""bench/scaling.py's pure parts: saturation detection, the replica figures read from
agent_decisions' result, the table and the plot written from a sample result. No
measurement here (benchmarks are never timed assertions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import scaling


def point(offered: int, achieved: float, p99: float, **extra: object) -> dict:
    return {"offered_rate": offered, "achieved_rate": achieved, "p99_us": p99, **extra}


def test_keeping_up_is_not_saturated() -> None:
    first = point(250, 249.0, 900.0)
    assert scaling.saturated(first, None) is None
    assert scaling.saturated(first, first) is None
    assert scaling.saturated(point(2000, 1850.0, 8000.0), first) is None  # 92.5 %, p99 under 10x


def test_achieved_below_the_offered_rate_is_saturation() -> None:
    why = scaling.saturated(point(4000, 3500.0, 1000.0), point(250, 250.0, 900.0))
    assert why is not None and "achieved 3500/s" in why


def test_a_p99_blow_up_is_saturation() -> None:
    why = scaling.saturated(point(8000, 8000.0, 9001.0), point(250, 250.0, 900.0))
    assert why is not None and "p99" in why
    assert scaling.saturated(point(8000, 8000.0, 8999.0), point(250, 250.0, 900.0)) is None


def test_lost_or_unstored_orders_are_saturation() -> None:
    first = point(250, 250.0, 900.0)
    assert scaling.saturated(point(500, 500.0, 900.0, without_terminal_report=3), first) is not None
    assert scaling.saturated(point(500, 500.0, 900.0, not_stored=1), first) is not None


def test_replica_points_from_agent_decisions_runs_and_best() -> None:
    runs = {"runs": [{"replicas": 1, "workload": "hold", "decisions_per_s": 100},
                     {"replicas": 2, "workload": "hold", "decisions_per_s": 190},
                     {"replicas": 1, "workload": "hold", "decisions_per_s": 110},
                     {"replicas": 1, "workload": "hold", "decisions_per_s": 300},
                     {"replicas": 2, "workload": "hold", "decisions_per_s": 0}]}
    got = scaling.replica_points(runs)
    assert got == [{"workload": "hold", "replicas": 1, "decisions_per_s": 110.0, "runs": [100.0, 110.0, 300.0],
                    "zero_runs": 0},
                   {"workload": "hold", "replicas": 2, "decisions_per_s": 190.0, "runs": [190.0, 0.0], "zero_runs": 1}]
    best = {"best_decisions_per_s": {"with_orders": {"1": 50, "3": 140}}}
    assert [(p["replicas"], p["decisions_per_s"]) for p in scaling.replica_points(best)] == [(1, 50.0), (3, 140.0)]
    assert scaling.replica_points(None) == []


def test_agent_replicas_missing_file_says_so(tmp_path: Path) -> None:
    assert "missing" in scaling.agent_replicas(tmp_path)
    (tmp_path / "agent_decisions.json").write_text(json.dumps(
        {"started": "2026-12-05T14:00:00Z", "machine": {"loadavg_1m": 5.0},
         "results": {"replicas": {"best_decisions_per_s": {"hold": {"1": 400, "2": 700}}}}}))
    got = scaling.agent_replicas(tmp_path)
    assert [p["decisions_per_s"] for p in got["points"]] == [400.0, 700.0]
    assert got["loadavg_1m"] == 5.0


SAMPLE = {
    "started": "2026-12-05T14:30:00Z", "loadavg_start": [5.1, 5.0, 4.0],
    "market_data": {"loadavg": {"before": [5.0], "after": [5.2]}, "points": [
        {"symbols": n, "raw_ticks_per_s": raw, "raw_rss_mb": 20.0,
         "sim": {"ticks_per_s": int(raw * 0.8), "ratio_to_raw": 0.8, "ratio_spread": [0.75, 0.85],
                 "rss_mb_steady": rss, "history_bars_per_series": h},
         "replay": {"ticks_per_s": int(raw * 0.6), "ratio_to_raw": 0.6, "ratio_spread": [0.55, 0.65],
                    "rss_mb_steady": rss + 5, "history_bars_per_series": h}}
        for n, raw, rss, h in ((1000, 700000, 40.0, 139), (10000, 650000, 90.0, 13), (100000, 400000, 150.0, 1))]},
    "order_path": {"loadavg": {"before": [5.0]}, "saturation": {"offered_rate": 4000, "why": "achieved 3100/s < 90%"},
                   "points": [{"offered_rate": r, "achieved_rate": a, "p50_us": 500.0, "p99_us": p99,
                               "p99_9_us": p99 * 2, "echo_p50_us": 150.0, "echo_p99_us": 300.0,
                               "echo_p99_9_us": 600.0}
                              for r, a, p99 in ((250, 250.0, 900.0), (2000, 1990.0, 1500.0), (4000, 3100.0, 80000.0))]},
    "tick_to_fill": {"loadavg": {"before": [5.0]}, "baseline_order_p50_us": 500.0, "points": [
        {"symbols": n, "fills_per_s": f, "not_filled": 4, "bar_end_to_report_ms": {"p50": p50, "p99": p50 * 3},
         "bar_end_to_filled_ts_ms": {"p50": p50 - 1, "p99": p50 * 3 - 1}}
        for n, f, p50 in ((3, 2.5, 12.0), (100, 80.0, 40.0), (1000, 300.0, 900.0))]},
    "agent_replicas": {"source": "agent_decisions.json", "started": "2026-12-05T14:00:00Z", "loadavg_1m": 5.0,
                       "points": [{"workload": "hold", "replicas": n, "decisions_per_s": 400.0 * n} for n in (1, 2, 3)]},
}


def test_table_states_each_point_with_its_baseline() -> None:
    text = scaling.table(SAMPLE)
    assert "| 100,000 | 400,000 | 320,000 (0.8, 0.75-0.85) | 240,000 (0.6, 0.55-0.65) | 150.0 / 155.0 (20.0) | 1 |" in text
    assert "| 4,000 | 3,100.0 | 500.0 / 80000.0 / 160000.0 | 150.0 / 300.0 / 600.0 |" in text
    assert "saturation: achieved 3100/s < 90%" in text
    assert "| 1,000 | 300.0 | 4 | 900.0 / 2700.0 | 899.0 / 2699.0 |" in text
    assert "order path alone at its lowest rate p50 / p99 500.0" in text
    assert "| hold | 3 | 1,200.0 |" in text
    missing = scaling.table({**SAMPLE, "agent_replicas": {"missing": "run agent_decisions first"}})
    assert "run agent_decisions first" in missing
    failed = scaling.table({**SAMPLE, "order_path": {"failed": "NatsServerError: parse error", "points": []}})
    assert "**order_path failed**: NatsServerError: parse error" in failed
    assert "offered/s" not in failed and "| 100,000 |" in failed


def test_outputs_are_written(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    result = json.loads(json.dumps(SAMPLE))
    scaling.write_outputs(result, tmp_path)
    assert (tmp_path / "scaling.md").read_text().strip() == result["table_md"].strip()
    png = (tmp_path / "scaling.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
