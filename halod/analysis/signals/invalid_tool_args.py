"""`invalid_tool_args`: tool-call arguments that are not valid JSON or that violate the JSON schema
declared for the tool.

**Rule.** For every tool call of the trace (`_tools.tool_calls`: TOOL spans, and requested calls no
TOOL span ran), with its declared tool set (`_tools.declarations`: the requesting LLM span's
`llm.tools` / `gen_ai.tool.definitions`, an ancestor's `agent.tools`, `context.declared_tools`):
- the arguments judged are the TOOL span's non-blank `tool_arguments` (what the tool received),
  else the arguments the LLM span requested; when the TOOL span's are not JSON but requested ones
  exist, the requested ones (a TOOL span may record its input as rendered text). Blank text counts
  as `{}`; a call without any recorded arguments is not judged. (Instrumentations can record
  requested arguments poorly — any-agent's LlamaIndex dump shows `{}` for calls that ran with
  arguments — so what ran wins.);
- `invalid_json`: the judged arguments are not JSON (or longer than 65536 characters): reported when
  they are requested arguments (function-calling arguments are JSON by definition), when the tool has
  a declared schema, or when the text starts with `{` or `[` (a TOOL span's input may legitimately be
  plain text, e.g. a LangChain tool's query string);
- schema violations, when the call's name is declared with a parameters schema. The checker covers
  `type` (string, integer — an integral number such as `1.0` counts —, number, boolean, array, object,
  null; a list of types; OpenAPI `nullable`), `enum`, `const`, `required`, `properties`,
  `additionalProperties` (`false`: each unknown property is a violation; a schema: unknown properties
  are checked against it), `items` (a schema), `anyOf` / `oneOf` (valid when some alternative is;
  `oneOf` is not checked for exclusivity; at most 32 alternatives) and `allOf`, recursively (nested
  objects, array items), depth at most 32, first 1000 items of an array, at most 10000 (value,
  schema) visits per call (schemas come from traces: the work stays bounded). When
  `additionalProperties` is not given, unknown properties are allowed (JSON Schema semantics) unless
  `unknown_properties_when_unspecified`; tau-bench's schemas never state it. Other keywords
  (formats, lengths, ranges, patterns, `$ref`) are ignored. Rules named in details: `required`,
  `type`, `enum`, `const`, `unknown_property`, `any_of`.

One finding per call with at least one violation, at the TOOL span (or the requesting LLM span),
`tool` = the tool name; severity `error`, except `warning` when every violation is an
`unknown_property` that only `unknown_properties_when_unspecified` flags. Details: `violations`
(`[{path, rule, message}]`, at most `max_violations`), `count` (all violations) and an `arguments`
excerpt.

**Knobs:** `enabled`, `use_agent_tools` (True), `unknown_properties_when_unspecified` (False),
`max_violations` (20), `ignore_tools` ([]).

**Example.** Declared `send_certificate` with parameters `{"type": "object", "properties": {"user_id":
{"type": "string"}, "amount": {"type": "number"}}, "required": ["user_id", "amount"],
"additionalProperties": false}`; the TOOL span runs it with `{"amount": "100", "note": "sorry"}`.
One finding: `violations = [{"path": "$", "rule": "required", "message": "missing required property
'user_id'"}, {"path": "$.amount", "rule": "type", "message": "expected number, got string"},
{"path": "$.note", "rule": "unknown_property", "message": "property 'note' is not declared"}]`.
Arguments `{"user_id": "sara_doe_496", "amount": 100}` give none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import Field

from halod.analysis.signals._tools import Declarations, ToolCall, declarations, tool_calls
from halod.analysis.signals.base import NOT_JSON, DetectContext, Finding, Severity, excerpt, parse_json
from halod.analysis.trace import TraceSpans
from halod.security import StrictModel

SIGNAL = "invalid_tool_args"

MAX_SCHEMA_DEPTH = 32
MAX_ITEMS = 1000
_MAX_KEY = 80


class Config(StrictModel):
    """Knobs of the `invalid_tool_args` detector."""

    enabled: bool = Field(default=True, description="Run this detector.")
    use_agent_tools: bool = Field(
        default=True, description="Resolve declared tools from an ancestor's `agent.tools` (as unknown_tool does)."
    )
    unknown_properties_when_unspecified: bool = Field(
        default=False,
        description="Also flag properties not listed in `properties` when the schema does not state "
        "`additionalProperties` (JSON Schema allows them; many function runtimes reject unexpected arguments).",
    )
    max_violations: int = Field(default=20, ge=1, le=1000, description="Most violations listed per finding.")
    ignore_tools: list[str] = Field(default_factory=list, description="Tool names never checked.")


@dataclass(frozen=True, slots=True)
class Violation:
    path: str
    rule: str
    message: str
    strict_only: bool = False  # an unknown property flagged only because of unknown_properties_when_unspecified

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "rule": self.rule, "message": self.message}


_TYPE_NAMES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}


def json_type(value: Any) -> str:
    return "null" if value is None else _TYPE_NAMES.get(type(value), type(value).__name__)


def is_type(value: Any, name: Any) -> bool:
    """Whether a JSON value has a JSON Schema primitive type (unknown type names accept anything)."""
    if name == "string":
        return isinstance(value, str)
    if name == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer())
    if name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if name == "boolean":
        return isinstance(value, bool)
    if name == "array":
        return isinstance(value, list)
    if name == "object":
        return isinstance(value, dict)
    if name == "null":
        return value is None
    return True


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality: booleans are not numbers, 1 equals 1.0, containers compare deeply."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and bool(a == b)


def _key(path: str, key: str) -> str:
    key = key if len(key) <= _MAX_KEY else key[:_MAX_KEY] + "…"
    return f"{path}.{key}" if key.isidentifier() else f"{path}[{key!r}]"


def check_schema(value: Any, schema: Any, *, strict_properties: bool = False, limit: int = 1000,
                 path: str = "$") -> list[Violation]:
    """The violations of `value` against `schema` (the subset of JSON Schema in the module docstring).

    Schemas come from traces, so the work is bounded: depth at most `MAX_SCHEMA_DEPTH` (alternatives
    included) and at most `MAX_VISITS` (value, schema) visits, after which checking stops."""
    checker = _Checker(strict_properties)
    checker.check(value, schema, path, limit, 0)
    return checker.out


MAX_VISITS = 10000


class _Checker:
    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.visits = 0
        self.out: list[Violation] = []

    def valid(self, value: Any, schema: Any, path: str, depth: int) -> bool:
        """Whether `value` satisfies `schema` (an alternative), sharing this checker's budget."""
        saved = self.out
        self.out = []
        self.check(value, schema, path, 1, depth)
        ok = not self.out
        self.out = saved
        return ok

    def check(self, value: Any, schema: Any, path: str, limit: int, depth: int) -> None:
        out = self.out
        if len(out) >= limit or depth > MAX_SCHEMA_DEPTH or not isinstance(schema, dict) or self.visits >= MAX_VISITS:
            return
        self.visits += 1
        for keyword in ("anyOf", "oneOf"):
            branches = schema.get(keyword)
            if isinstance(branches, list) and branches and not any(
                self.valid(value, branch, path, depth + 1) for branch in branches[:32] if isinstance(branch, dict)
            ):
                out.append(Violation(path, "any_of", f"matches none of the {len(branches)} alternatives ({keyword})"))
        all_of = schema.get("allOf")
        if isinstance(all_of, list):
            for branch in all_of[:32]:
                self.check(value, branch, path, limit, depth + 1)
        declared = schema.get("type")
        if declared is not None:
            types = list(declared) if isinstance(declared, list) else [declared]
            if schema.get("nullable") is True:
                types.append("null")
            if types and not any(is_type(value, name) for name in types):
                expected = " or ".join(str(name) for name in types)
                out.append(Violation(path, "type", f"expected {expected}, got {json_type(value)}"))
                return
        enum = schema.get("enum")
        if isinstance(enum, list) and enum and not any(json_equal(value, item) for item in enum):
            out.append(Violation(path, "enum", f"{excerpt(value, 60)} is not one of {excerpt(enum, 120)}"))
        if "const" in schema and not json_equal(value, schema["const"]):
            out.append(Violation(path, "const", f"expected {excerpt(schema['const'], 60)}"))
        if isinstance(value, dict):
            self.check_object(value, schema, path, limit, depth)
        elif isinstance(value, list):
            items = schema.get("items")
            if isinstance(items, dict):
                for index, item in enumerate(value[:MAX_ITEMS]):
                    if len(out) >= limit:
                        break
                    self.check(item, items, f"{path}[{index}]", limit, depth + 1)

    def check_object(self, value: dict[str, Any], schema: dict[str, Any], path: str, limit: int, depth: int) -> None:
        out = self.out
        properties = schema.get("properties")
        known = properties if isinstance(properties, dict) else {}
        required = schema.get("required")
        for name in required if isinstance(required, list) else ():
            if isinstance(name, str) and name not in value:
                out.append(Violation(path, "required", f"missing required property {excerpt(name, _MAX_KEY)!r}"))
        additional = schema.get("additionalProperties")
        for key, item in value.items():
            if len(out) >= limit:
                return
            if key in known:
                self.check(item, known[key], _key(path, key), limit, depth + 1)
            elif additional is False:
                out.append(Violation(_key(path, key), "unknown_property",
                                     f"property {excerpt(key, _MAX_KEY)!r} is not declared"))
            elif isinstance(additional, dict):
                self.check(item, additional, _key(path, key), limit, depth + 1)
            elif additional is None and self.strict and isinstance(properties, dict):
                out.append(Violation(_key(path, key), "unknown_property",
                                     f"property {excerpt(key, _MAX_KEY)!r} is not declared", strict_only=True))


class Detector:
    """`invalid_tool_args` (module docstring)."""

    name = SIGNAL

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self._ignore = frozenset(self.config.ignore_tools)

    def detect(self, trace: TraceSpans, context: DetectContext) -> list[Finding]:
        if not self.config.enabled:
            return []
        declared_sets = declarations(trace, context, self.config.use_agent_tools)
        findings: list[Finding] = []
        for call in tool_calls(trace):
            if call.name in self._ignore:
                continue
            arguments, violations = self._violations(call, declared_sets)
            if violations:
                severity: Severity = "warning" if all(v.strict_only for v in violations) else "error"
                findings.append(Finding.at(
                    SIGNAL, severity, call.span, tool=call.name,
                    violations=[v.as_dict() for v in violations[: self.config.max_violations]],
                    count=len(violations), arguments=excerpt(arguments),
                ))
        return findings

    def _violations(self, call: ToolCall, declared_sets: Declarations) -> tuple[Any, list[Violation]]:
        """(the arguments judged, their violations)."""
        declared = declared_sets.for_call(call)
        schema = declared.tools.get(call.name) if declared is not None else None
        executed = call.arguments if call.executed else None
        if isinstance(executed, str) and not executed.strip():
            executed = None
        requested = call.requested_arguments
        arguments = executed if executed is not None else requested
        if arguments is None:
            return None, []
        value = _parsed(arguments)
        if value is NOT_JSON and executed is not None and requested is not None:
            # The TOOL span may record its input as plain text (the framework's rendering): judge the model's.
            arguments, value = requested, _parsed(requested)
        if value is NOT_JSON:
            text = arguments.strip() if isinstance(arguments, str) else ""
            if requested is not None or schema is not None or text[:1] in ("{", "["):
                return arguments, [Violation("$", "invalid_json", "arguments are not valid JSON")]
            return arguments, []
        if schema is None:
            return arguments, []
        return arguments, check_schema(
            value, schema, strict_properties=self.config.unknown_properties_when_unspecified, limit=1000)


def _parsed(arguments: Any) -> Any:
    """JSON value of arguments (blank text is `{}`), NOT_JSON when the text does not parse."""
    if isinstance(arguments, str):
        text = arguments.strip()
        return {} if not text else parse_json(text)
    return arguments
