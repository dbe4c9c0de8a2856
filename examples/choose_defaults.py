"""The backtest that chose the trading agent's default strategy (README "Choosing the
defaults"): every built-in strategy over a grid, on the first and the second half of the
recorded sim feed (data/backtest/sim-1s.csv), with moonbus.toml's defaults otherwise.

    .venv/bin/python -m examples.choose_defaults
"""

from __future__ import annotations

from services.backtest import data, engine

GRID = ([("momentum", {"momentum_lookback": lb, "momentum_threshold_pct": th})
         for lb in (20, 60, 120, 300) for th in (0.05, 0.1, 0.2, 0.3, 0.5)]
        + [("mean_reversion", {"meanrev_lookback": lb, "meanrev_stretch_pct": th})
           for lb in (20, 60, 120) for th in (0.1, 0.2, 0.3, 0.5)]
        + [("ma_crossover", {"ma_fast": f, "ma_slow": s}) for f, s in ((5, 20), (10, 60), (20, 120), (30, 300),
                                                                        (60, 300))])


def main() -> None:
    series = data.load("data/backtest/sim-1s.csv")
    halves = ([s.slice(0, len(s) // 2) for s in series], [s.slice(len(s) // 2, len(s)) for s in series])
    for name, params in GRID:
        cells = []
        for half in halves:
            r = engine.run(half, strategy=name, params=params)
            cells.append(f"PnL {r.final_equity - r.starting_cash:+9.2f} fees {r.fees:6.2f} fills {len(r.fills):4}")
        print(f"{name:15} {params!s:58} first 10 min: {cells[0]} | next 10 min: {cells[1]}")


if __name__ == "__main__":
    main()
