"""`tool_loop`: the agent keeps calling the same tool, or goes round the same short cycle of tools.

**Rule.** The trace's tool calls in start-time order (`_tools.tool_calls`), without the tools in
`ignore_tools`, become *steps*: with `count_parallel_as_one`, consecutive calls of the same tool
requested by the same LLM span (one model response fanning out in parallel) form one step; otherwise
each call is a step. Then, one `tool_loop` finding (severity `warning`) per loop:
- `consecutive`: a maximal run of at least `min_consecutive` consecutive steps calling the same tool.
  With `exempt_distinct_arguments`, a run whose calls all have different normalized arguments (see
  `repeated_tool_call`) is a fan-out over distinct inputs, not a loop, and is not reported (off by
  default: such runs also include brute-force searching);
- `cycle`: scanning left to right, a block of `L` steps (2 <= L <= `max_cycle_length`) with at least
  two different tools, not itself a repetition of a shorter block, repeated back to back at least
  `min_cycle_repeats` times (the shortest such L at each position wins; the scan resumes after the
  last full repeat).
The finding points at the loop's first call; `tool` is the repeated tool (for a cycle, its first
tool); details: `kind`, `count` (steps in the run) or `cycle` and `repeats`, `calls`, the `sequence`
of tool names (at most 50), `last_span_id`, and for runs `distinct_arguments`.

**Knobs:** `enabled`, `min_consecutive` (4), `max_cycle_length` (3), `min_cycle_repeats` (3),
`count_parallel_as_one` (True), `exempt_distinct_arguments` (False), `ignore_tools` ([]).

**Example.** Tool calls `search, search, search, search, book` (each from its own LLM turn): one
finding at the first `search` with `details = {"kind": "consecutive", "count": 4, "calls": 4,
"distinct_arguments": ..., ...}`. Calls `read, edit, read, edit, read, edit`: one finding at the first
`read`, `details = {"kind": "cycle", "cycle": ["read", "edit"], "repeats": 3, ...}`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import Field

from halod.analysis.signals._tools import ToolCall, tool_calls
from halod.analysis.signals.base import DetectContext, Finding
from halod.analysis.signals.repeated_tool_call import normalized_arguments
from halod.analysis.trace import TraceSpans
from halod.security import StrictModel

SIGNAL = "tool_loop"
_MAX_SEQUENCE = 50


class Config(StrictModel):
    """Knobs of the `tool_loop` detector."""

    enabled: bool = Field(default=True, description="Run this detector.")
    min_consecutive: int = Field(default=4, ge=2, description="Consecutive steps calling one tool that make a loop.")
    max_cycle_length: int = Field(default=3, ge=0, le=16,
                                  description="Longest cycle of tools looked for (below 2: no cycle rule).")
    min_cycle_repeats: int = Field(default=3, ge=2, description="Back-to-back repeats of a cycle that make a loop.")
    count_parallel_as_one: bool = Field(
        default=True, description="Consecutive calls of one tool requested by the same LLM span count as one step."
    )
    exempt_distinct_arguments: bool = Field(
        default=False, description="Do not report a run of one tool whose calls all have different arguments."
    )
    ignore_tools: list[str] = Field(default_factory=list, description="Tool names left out of the sequence.")


@dataclass
class _Step:
    name: str
    calls: list[ToolCall] = field(default_factory=list)


def steps_of(calls: list[ToolCall], parallel_as_one: bool) -> list[_Step]:
    steps: list[_Step] = []
    for call in calls:
        last = steps[-1] if steps else None
        if (parallel_as_one and last is not None and last.name == call.name and call.requester is not None
                and last.calls[-1].requester is call.requester):
            last.calls.append(call)
        else:
            steps.append(_Step(call.name, [call]))
    return steps


def _primitive(block: list[str]) -> bool:
    size = len(block)
    return not any(size % d == 0 and block == block[:d] * (size // d) for d in range(1, size))


class Detector:
    """`tool_loop` (module docstring)."""

    name = SIGNAL

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self._ignore = frozenset(self.config.ignore_tools)

    def detect(self, trace: TraceSpans, context: DetectContext) -> list[Finding]:
        if not self.config.enabled:
            return []
        calls = [call for call in tool_calls(trace) if call.name not in self._ignore]
        steps = steps_of(calls, self.config.count_parallel_as_one)
        return self._runs(steps) + self._cycles(steps)

    def _runs(self, steps: list[_Step]) -> list[Finding]:
        findings: list[Finding] = []
        start = 0
        while start < len(steps):
            end = start
            while end < len(steps) and steps[end].name == steps[start].name:
                end += 1
            if end - start >= self.config.min_consecutive:
                run = [call for step in steps[start:end] for call in step.calls]
                distinct = len({normalized_arguments(call.arguments) for call in run})
                if not (self.config.exempt_distinct_arguments and distinct == len(run)):
                    findings.append(Finding.at(
                        SIGNAL, "warning", run[0].span, tool=steps[start].name, kind="consecutive",
                        count=end - start, calls=len(run), distinct_arguments=distinct,
                        sequence=[call.name for call in run[:_MAX_SEQUENCE]], last_span_id=run[-1].span.span_id,
                    ))
            start = end
        return findings

    def _cycles(self, steps: list[_Step]) -> list[Finding]:
        findings: list[Finding] = []
        names = [step.name for step in steps]
        repeats_needed = self.config.min_cycle_repeats
        size = len(names)
        start = 0
        while start < size:
            found: tuple[int, int] | None = None
            for length in range(2, self.config.max_cycle_length + 1):
                if start + length * repeats_needed > size:
                    break
                block = names[start:start + length]
                if len(set(block)) < 2 or not _primitive(block):
                    continue
                end = start + length
                while end + length <= size and names[end:end + length] == block:
                    end += length
                if (end - start) // length >= repeats_needed:
                    found = (length, end)
                    break
            if found is None:
                start += 1
                continue
            length, end = found
            loop = [call for step in steps[start:end] for call in step.calls]
            findings.append(Finding.at(
                SIGNAL, "warning", loop[0].span, tool=names[start], kind="cycle", cycle=names[start:start + length],
                repeats=(end - start) // length, calls=len(loop),
                sequence=[call.name for call in loop[:_MAX_SEQUENCE]], last_span_id=loop[-1].span.span_id,
            ))
            start = end
        return findings
