"""Failure-signal detectors: one module per signal family (see base.py for the contract).

`DETECTOR_MODULES` lists them; the config key of a module's settings (`analysis.signals.<key>`) is
its module name. `build_detectors` validates those settings (every problem with its YAML path) and
returns the enabled detectors.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from pydantic import ValidationError

from halod.analysis.signals.base import DetectContext, Detector, Finding

DETECTOR_MODULES: tuple[str, ...] = (
    "tool_error", "unknown_tool", "invalid_tool_args", "repeated_tool_call", "tool_loop", "text_tool_call",
    "refusal", "llm_error", "step_limit", "no_final_answer", "escalation", "failed_outcome", "outliers",
)


def modules() -> dict[str, ModuleType]:
    return {name: importlib.import_module(f"halod.analysis.signals.{name}") for name in DETECTOR_MODULES}


def validate_settings(settings: dict[str, Any], path: str = "analysis.signals") -> tuple[dict[str, Any], list[str]]:
    """Each module's validated Config by key, and the problems found (unknown keys, bad values)."""
    available = modules()
    configs: dict[str, Any] = {}
    problems: list[str] = []
    for key in settings:
        if key not in available:
            problems.append(f"{path}.{key}: unknown detector (known: {', '.join(sorted(available)) or 'none'})")
    for key, module in available.items():
        try:
            configs[key] = module.Config.model_validate(settings.get(key) or {})
        except ValidationError as exc:
            for error in exc.errors():
                where = ".".join(str(part) for part in (path, key, *error["loc"]))
                problems.append(f"{where}: {error['msg']}")
    return configs, problems


def build_detectors(settings: dict[str, Any]) -> list[Detector]:
    configs, problems = validate_settings(settings)
    if problems:
        raise ValueError("; ".join(problems))
    available = modules()
    return [available[key].Detector(config) for key, config in configs.items() if config.enabled]


__all__ = ["DETECTOR_MODULES", "DetectContext", "Detector", "Finding", "build_detectors", "validate_settings"]
