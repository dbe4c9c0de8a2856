"""Finding strategy plugins and building each symbol's strategy from the config.

Plugins come from three places, each name from exactly one (a clash is an error naming
both origins):
- the built-ins (strategy.py): momentum, mean_reversion, ma_crossover;
- the `*.py` files of `[trading_agent] strategies_dir` (default `strategies/`, relative to
  the working directory; files starting with `_` are skipped): every StrategyPlugin
  subclass a file defines (not merely imports) with a `name`;
- installed packages, entry-point group `moonbus.strategies` (importlib.metadata):
  `name = "package.module:Class"` (or a module: its plugin classes).
`llm` is no plugin: it is the LLM strategy (decide.py).

Which strategy a symbol gets: `[trading_agent.symbols."<symbol>"] strategy` (symbol
matched case-insensitively, as environment overrides lowercase it), else the global
`strategy`; its params: that table's `params`, else the global `params` when the strategy
is the global one, over the plugin's defaults. Everything is validated at start:
an unknown strategy or a bad param is a StrategyLoadError naming the symbol and the key.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

from .config import DEFAULT_STRATEGIES_DIR, TradingConfig
from .context import HISTORY_LIMIT
from .plugin import NAME_PATTERN, ParamsError, StrategyPlugin, validate_params
from .strategy import BUILTINS

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "moonbus.strategies"
RESERVED = {"llm"}


class StrategyLoadError(ValueError):
    """A plugin that cannot be loaded, a name clash, an unknown strategy or bad params."""


@dataclass(frozen=True)
class Found:
    cls: type[StrategyPlugin]
    origin: str  # "built-in", "file strategies/breakout.py", "entry point moonbus.strategies: ..."


def _plugin_classes(module: ModuleType) -> list[type[StrategyPlugin]]:
    """The plugin classes `module` defines itself, in definition order."""
    return [obj for _, obj in vars(module).items()
            if inspect.isclass(obj) and issubclass(obj, StrategyPlugin) and obj.__module__ == module.__name__
            and obj.name]


def _load_file(path: Path) -> ModuleType:
    module_name = f"moonbus_strategies.{path.stem}_{abs(hash(str(path.resolve()))):x}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise StrategyLoadError(f"strategy file {path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pydantic look their module up
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(module_name, None)
        raise StrategyLoadError(f"strategy file {path}: {type(e).__name__}: {e}") from e
    return module


def from_folder(folder: Path) -> list[Found]:
    found = []
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        classes = _plugin_classes(_load_file(path))
        if not classes:
            log.warning("strategy file %s defines no StrategyPlugin subclass with a name", path)
        found += [Found(cls, f"file {path}") for cls in classes]
    return found


def from_entry_points(entry_points: Iterable[metadata.EntryPoint] | None = None) -> list[Found]:
    if entry_points is None:
        entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)
    found = []
    for ep in entry_points:
        dist = f" ({ep.dist.name} {ep.dist.version})" if ep.dist is not None else ""
        origin = f"entry point {ENTRY_POINT_GROUP}: {ep.name} = {ep.value}{dist}"
        try:
            obj = ep.load()
        except Exception as e:
            raise StrategyLoadError(f"{origin}: {type(e).__name__}: {e}") from e
        if inspect.ismodule(obj):
            classes = _plugin_classes(obj)
        elif inspect.isclass(obj) and issubclass(obj, StrategyPlugin):
            classes = [obj]
        else:
            raise StrategyLoadError(f"{origin}: {obj!r} is not a StrategyPlugin subclass (nor a module of them)")
        found += [Found(cls, origin) for cls in classes]
    return found


def discover(strategies_dir: str | Path | None = DEFAULT_STRATEGIES_DIR, *,
             entry_points: Iterable[metadata.EntryPoint] | None = None) -> dict[str, Found]:
    """Every strategy plugin by name. A missing default folder is no error (no local
    plugins); a configured folder that does not exist is."""
    found = [Found(cls, "built-in") for cls in BUILTINS]
    if strategies_dir is not None:
        folder = Path(strategies_dir)
        if folder.is_dir():
            found += from_folder(folder)
        elif str(strategies_dir) != DEFAULT_STRATEGIES_DIR:
            raise StrategyLoadError(f"[trading_agent] strategies_dir {str(strategies_dir)!r}: no such folder "
                                    f"(from {Path.cwd()})")
    found += from_entry_points(entry_points)
    registry: dict[str, Found] = {}
    for f in found:
        name = f.cls.name
        if not isinstance(name, str) or not NAME_PATTERN.match(name) or name in RESERVED:
            raise StrategyLoadError(f"strategy {name!r} from {f.origin}: a name is a lowercase identifier "
                                    f"(^[a-z][a-z0-9_]{{0,63}}$) other than {', '.join(sorted(RESERVED))}")
        if name in registry and registry[name].cls is not f.cls:
            raise StrategyLoadError(f"strategy name {name!r} clashes: {registry[name].origin} and {f.origin}")
        registry.setdefault(name, f)
    return registry


def _symbol_table(cfg: TradingConfig, symbol: str) -> tuple[str, Any] | None:
    for key, table in cfg.symbols.items():
        if key.upper() == symbol.upper():
            return key, table
    return None


def choice_for(cfg: TradingConfig, symbol: str | None) -> tuple[str, Mapping[str, Any], str]:
    """(strategy name, configured params, where in the config) for `symbol` (None = the global one)."""
    entry = _symbol_table(cfg, symbol) if symbol is not None else None
    if entry is not None:
        key, table = entry
        where = f'[trading_agent.symbols."{key}"]'
        if table.strategy is not None:
            return table.strategy, table.params, where
        if table.params:
            return cfg.strategy, {**cfg.params, **table.params}, where
    return cfg.strategy, cfg.params, "[trading_agent]"


def build(registry: Mapping[str, Found], cfg: TradingConfig, name: str, params: Mapping[str, Any],
          where: str) -> StrategyPlugin:
    """The plugin `name` with `params` over its defaults, or a StrategyLoadError saying where."""
    found = registry.get(name)
    if found is None:
        raise StrategyLoadError(f"{where} strategy {name!r}: no such strategy (known: llm, "
                                f"{', '.join(sorted(registry))})")
    cls = found.cls
    try:
        values = {**cls.defaults(cfg), **params}
        plugin = cls.from_params(validate_params(cls, values))
        needed = plugin.bars_needed
        if isinstance(needed, bool) or not isinstance(needed, int) or not 1 <= needed <= HISTORY_LIMIT:
            raise StrategyLoadError(f"{where} strategy {name!r} ({found.origin}): bars_needed must be an int "
                                    f"from 1 to {HISTORY_LIMIT} (md.api.history's limit), got {needed!r}")
        return plugin
    except ParamsError as e:
        key = f"params.{e.key}" if e.key else "params"
        raise StrategyLoadError(f"{where} {key} of strategy {name!r} ({found.origin}): {e.message}") from None
    except StrategyLoadError:
        raise
    except Exception as e:
        raise StrategyLoadError(f"{where} strategy {name!r} ({found.origin}) cannot start: "
                                f"{type(e).__name__}: {e}") from e
