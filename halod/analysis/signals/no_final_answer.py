"""`no_final_answer`: the run ends without a final output, or ends on a tool call.

Rule (traces with no LLM span are never judged; LLM spans are `semantic_kind == "LLM"`):

1. **ended on a tool call** (`details.reason = "ended_on_tool_call"`): after the last LLM call (the
   LLM span that started last) there is a TOOL span that started later, or, when no TOOL span
   follows, the last LLM call itself requested tool calls (`_outputs.model_output`). Silent when
   one of those ending tools is a final-answer tool (`final_tools`, shell-style patterns,
   case-insensitive: smolagents `final_answer`, any-agent `final_output`, Pydantic AI
   `final_result`, ...): the answer was delivered through the tool. The evidence span is the last
   TOOL span (else the last LLM span); `tool` is the ending tool.
2. **empty final output** (`details.reason = "empty_output"`): otherwise, the root span has no
   output (`output_text` empty and none of `final_output_keys` set) and the last LLM call wrote no
   text (tool-call JSON is not text). Silent when no LLM span of the trace records any output at
   all (text or tool calls): the instrumentation does not capture outputs, so nothing can be
   judged (HALO's OpenAI Agents exports are like this).

Severity `warning`. Escalation tools (`transfer_to_human_agents`) are not final-answer tools by
default: a run that ends by handing off ended on a tool call (the `escalation` signal says why);
add them to `final_tools` to treat a hand-off as a final answer.

Knobs: `enabled`, `final_tools`, `final_output_keys`, `on_tool_call`, `on_empty_output`.

Example: an AGENT root, an LLM span whose output is `[{"function": {"name": "transfer_to_human_agents",
"arguments": "{}"}}]` and then a TOOL span `transfer_to_human_agents` answering "Transfer
successful", with nothing after it -> one finding `no_final_answer` at that TOOL span,
`tool="transfer_to_human_agents"`, `details={"reason": "ended_on_tool_call", "tools":
["transfer_to_human_agents"]}`.

The readers it shares with the other detectors live in `_outputs.py`.
"""

from __future__ import annotations

from pydantic import Field

from halod.analysis.signals._outputs import ending, llm_text, records_output
from halod.analysis.signals.base import DetectContext, Finding, glob_matcher
from halod.analysis.trace import TraceSpans
from halod.security import StrictModel

DEFAULT_FINAL_TOOLS = [
    "final_answer", "final_output", "final_result", "submit_final_answer", "submit_answer", "submit",
    "finish", "task_complete", "attempt_completion", "return_final_answer",
]


class Config(StrictModel):
    enabled: bool = Field(default=True, description="Run this detector.")
    final_tools: list[str] = Field(
        default_factory=lambda: list(DEFAULT_FINAL_TOOLS),
        description="Tools that deliver the final answer (shell-style patterns, case-insensitive): a run "
        "ending on one of them has answered.",
    )
    final_output_keys: list[str] = Field(
        default_factory=lambda: ["halod.document.final_output", "final_output", "agent.final_output"],
        description="Root attributes that hold the run's final output besides output.value / gen_ai outputs.",
    )
    on_tool_call: bool = Field(default=True, description="Fire when the run ends on a tool call.")
    on_empty_output: bool = Field(default=True, description="Fire when the run ends with no final output.")


class Detector:
    name = "no_final_answer"

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self._final = glob_matcher(self.config.final_tools)

    def detect(self, trace: TraceSpans, context: DetectContext) -> list[Finding]:
        config = self.config
        if not config.enabled:
            return []
        end = ending(trace)
        if end is None:
            return []
        names = end.tool_names
        if names:
            if not config.on_tool_call or any(self._final.match(name) for name in names):
                return []
            span = end.tools_after[-1] if end.tools_after else end.last_llm
            return [Finding.at(self.name, "warning", span, tool=names[-1], reason="ended_on_tool_call",
                               tools=names[:20])]
        if not config.on_empty_output or self._root_has_output(trace) or llm_text(end.last_llm).strip():
            return []
        if not any(records_output(span) for span in trace.llm_spans):
            return []  # outputs are not recorded by this instrumentation: nothing to judge
        return [Finding.at(self.name, "warning", end.last_llm, reason="empty_output",
                           status=end.last_llm.status_code)]

    def _root_has_output(self, trace: TraceSpans) -> bool:
        root = trace.root
        if root is None:
            return False
        output = root.output_text
        if isinstance(output, str) and output.strip():
            return True
        return any(root.get(key) not in (None, "") for key in self.config.final_output_keys)
