"""The derived features of a completed trace: one row of the `traces` table (docs/analysis.md)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson

from halod.analysis.trace import TraceSpans

UNKNOWN_SERVICE = "unknown_service"

# Attributes that say how a run ended, wherever a framework or an importer puts them. Keys under
# `outcome.` (halod's importers) are all kept.
OUTCOME_KEYS = ("reward", "success", "agent.outcome", "outcome", "score", "passed", "task.success")


def outcome_of(trace: TraceSpans) -> dict[str, Any]:
    """Outcome fields the trace carries (root first, then AGENT and EVALUATOR spans, where frameworks and
    importers put them), e.g. {"reward": 0.0, "success": false}."""
    spans = ([trace.root] if trace.root is not None else []) + [
        s for s in trace.spans if s is not trace.root and s.semantic_kind in ("AGENT", "EVALUATOR")]
    found: dict[str, Any] = {}
    for span in spans:
        for key, value in span.attrs.items():
            name = key[len("outcome."):] if key.startswith("outcome.") else key if key in OUTCOME_KEYS else None
            if name and name not in found and isinstance(value, str | int | float | bool):
                found[name] = value
    return found


def trace_group(trace: TraceSpans) -> tuple[str, str]:
    """(service, agent) a trace belongs to: the root's `service_name` (else the trace's first service,
    else `unknown_service`) and the root's `agent_name` (else the first non-empty `agent_name` of its
    spans in start order, else "")."""
    root = trace.root
    service = root.service_name if root is not None else None
    if not service:
        service = trace.services[0] if trace.services else UNKNOWN_SERVICE
    agent = root.agent_name if root is not None else None
    if not agent:
        agent = next((span.agent_name for span in trace.spans if span.agent_name), "")
    return str(service), str(agent)


def trace_duration_ns(trace: TraceSpans) -> int | None:
    """The root span's `duration_ns`; without a root (or its duration), the last span end minus the
    first span start; None for no spans."""
    root = trace.root
    duration = root.duration_ns if root is not None else None
    if isinstance(duration, int) and duration >= 0:
        return duration
    if not trace.spans:
        return None
    return max(0, trace.end_ns - trace.start_ns)


def trace_tokens(trace: TraceSpans) -> int | None:
    """The sum over LLM spans of `total_tokens`, else `prompt_tokens + completion_tokens` (either alone
    when only one is known); None when no LLM span has a token count."""
    total = 0
    seen = False
    for span in trace.llm_spans:
        tokens = span.total_tokens
        if tokens is None:
            prompt, completion = span.prompt_tokens, span.completion_tokens
            if prompt is None and completion is None:
                continue
            tokens = (prompt or 0) + (completion or 0)
        total += tokens
        seen = True
    return total if seen else None


def features(trace: TraceSpans, window_size_ns: int, signals: list[str], completion: str,
             now_ns: int) -> dict[str, Any]:
    spans = trace.spans
    kinds = Counter(span.semantic_kind or "UNKNOWN" for span in spans)
    root = trace.root
    end_ns = trace.end_ns
    start_ns = trace.start_ns
    tools = sorted({span.tool_name for span in trace.tool_spans if span.tool_name})
    outcome = outcome_of(trace)

    def total(column: str) -> int | None:
        values = [getattr(span, column) for span in trace.llm_spans if getattr(span, column) is not None]
        return sum(values) if values else None

    service, agent = trace_group(trace)
    return {
        "trace_id": trace.trace_id,
        "services": trace.services,
        "agent_names": sorted({span.agent_name for span in spans if span.agent_name}),
        "session_id": next((span.session_id for span in spans if span.session_id), None),
        "root_name": root.name if root is not None else None,
        "has_root": root is not None,
        "start_ns": start_ns,
        "end_ns": end_ns,
        "duration_ns": trace_duration_ns(trace),
        "span_count": len(spans),
        "kind_counts": orjson.dumps(dict(sorted(kinds.items()))).decode(),
        "llm_calls": kinds.get("LLM", 0),
        "tool_calls": kinds.get("TOOL", 0),
        "tool_errors": sum(1 for span in trace.tool_spans if span.is_error),
        "error_spans": sum(1 for span in spans if span.is_error),
        "prompt_tokens": total("prompt_tokens"),
        "completion_tokens": total("completion_tokens"),
        "total_tokens": trace_tokens(trace),
        "models": sorted({span.model_name for span in spans if span.model_name}),
        "tools": tools,
        "outcome": orjson.dumps(outcome).decode() if outcome else None,
        "signals": sorted(set(signals)),
        "window_start_ns": end_ns // window_size_ns * window_size_ns,
        "completed_ns": now_ns,
        "completion": completion,
        "evaluations": 0,  # counted when stored
        "service": service,
        "agent": agent,
    }
