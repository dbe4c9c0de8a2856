"""Run the benchmarks and write their results (`make bench`).

    python -m bench                 # every benchmark (but the long chaos and soak runs)
    python -m bench risk_check      # only these (module names in bench/)
    python -m bench --list

Each benchmark is a module `bench/<name>.py` with `run(ctx: Context) -> dict`. It
returns its figures (medians, percentiles, rates, and the baseline it measured in the
same run, since this machine is shared and noisy); the harness adds the machine and the
time and writes `bench/results/<name>.json`, then prints a one-line summary per result.
Benchmarks are never timed assertions in tests.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from services.common.bus import loop_factory

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


@dataclass
class Context:
    root: Path = ROOT
    results: Path = RESULTS
    quick: bool = False  # smaller runs, for a smoke check
    notes: list[str] = field(default_factory=list)


def percentiles(samples: list[float], points: tuple[float, ...] = (50, 90, 99, 99.9)) -> dict[str, float]:
    """Nearest-rank percentiles of `samples` plus min/max/count."""
    if not samples:
        return {"count": 0}
    ordered = sorted(samples)
    out: dict[str, float] = {"count": len(ordered), "min": ordered[0], "max": ordered[-1]}
    for p in points:
        rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
        out[f"p{p:g}".replace(".", "_")] = ordered[rank]
    out["median"] = out["p50"]
    return out


def machine() -> dict[str, object]:
    def cmd(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return ""

    return {
        "hostname": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "rustc": cmd("rustc", "--version"),
        "kernel": platform.release(),
        "loadavg_1m": os.getloadavg()[0],
        "event_loop": "asyncio" if loop_factory() is None else "uvloop",  # of the services and the bench's clients
    }


def available() -> list[str]:
    return sorted(p.stem for p in (ROOT / "bench").glob("*.py") if not p.stem.startswith("_"))


# Long runs with their own make targets (`make chaos`, `make soak`): only when named.
SEPARATE = ("chaos", "soak")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--quick", action="store_true", help="small runs: check that it works, figures are not meaningful")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(available()))
        return 0
    names = args.names or [n for n in available() if n not in SEPARATE]
    unknown = sorted(set(names) - set(available()))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(available())}", file=sys.stderr)
        return 2
    RESULTS.mkdir(parents=True, exist_ok=True)
    ctx = Context(quick=args.quick)
    failed = 0
    for name in names:
        print(f"== {name}", flush=True)
        started = time.time()
        try:
            figures = importlib.import_module(f"bench.{name}").run(ctx)
        except Exception:
            traceback.print_exc()
            failed += 1
            continue
        result = {
            "benchmark": name,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "seconds": round(time.time() - started, 1),
            "quick": args.quick,
            "machine": machine(),
            "results": figures,
        }
        path = RESULTS / f"{name}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(figures, indent=2))
        print(f"-> {path.relative_to(ROOT)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
