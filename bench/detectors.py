"""Detector evaluation on real agent runs: the tau-bench airline transcripts (200 runs) and the AgentRx
tau-bench retail transcripts (100 runs, 39 step-level failure labels), read through halod's own
readers and normalization (the `halod import` path), every detector run on every trace.

    python bench/detectors.py            # markdown tables (what docs/detectors.md shows)
    python bench/detectors.py --json     # one JSON object

Two detector configurations are compared: `default` (the embedded defaults, `analysis.signals: {}`)
and `tuned` (TUNED below: general knobs that fit finished transcripts, never dataset-specific rules).

It prints
1. per signal and dataset: traces it fires on, how many of those failed (`reward == 0`), its
   precision (share of fired traces that failed) and recall (share of failed traces it fires on);
2. trace-level precision and recall of "any failure signal" against `reward == 0`, including
   `failed_outcome` (it reads the reward: recall is 1 by construction) and excluding it (what the
   behavioural detectors see without the outcome label);
3. for the AgentRx step labels (`tau_ground_truth.json`): the share of labelled failures, by
   category, that some signal other than `failed_outcome` localizes within one step: a finding whose
   evidence span's `halod.message.index` (an LLM span: its assistant message; a TOOL span: its
   result message) is within +-1 of the label's `step_number`. Labels of trajectories that are not
   in the dataset are reported as missing and not counted. `chance` is the expected number of
   labels localized if each label's step were moved to a random message of its run, the findings
   unchanged: the share of the run's messages within one step of some finding, summed over labels.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from halod.analysis.signals import (
    DetectContext,
    Detector,
    Finding,
    build_detectors,
    escalation,
    no_final_answer,
    outliers,
)
from halod.analysis.trace import TraceSpans
from halod.formats import ReadOptions, read_file
from halod.normalize import normalize_request

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
AIRLINE = DATASETS / "tau-bench-airline" / "gpt-4o-airline.json"
RETAIL = DATASETS / "agentrx-tau-retail" / "tau_dataset_full.json"
LABELS = DATASETS / "agentrx-tau-retail" / "tau_ground_truth.json"
DATASET_FILES = {"airline": AIRLINE, "retail": RETAIL}

OUTCOME_SIGNAL = "failed_outcome"  # reads the reward itself: excluded from the honest numbers
# Signals about how the conversation ended (a decline, a hand-off, no answer): in customer service these
# are often the correct behaviour. Section 2 also reports "any signal" without them (mechanical signals
# only: tool errors, redundant calls, loops, limits, ...).
CONVERSATIONAL = frozenset({"refusal", "refusal_loop", "escalation", "no_final_answer"})
VARIANTS = {
    "including_failed_outcome": ("all signals (incl. failed_outcome)", frozenset()),
    "excluding_failed_outcome": ("all but failed_outcome", frozenset({OUTCOME_SIGNAL})),
    "mechanical_only": ("mechanical only", frozenset({OUTCOME_SIGNAL}) | CONVERSATIONAL),
}
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    # General knobs for finished agent transcripts (each explained in docs/detectors.md):
    "tuned": {
        # the agent's step limit, when known (tau-bench runs stop after 30 agent steps without saying so)
        "step_limit": {"max_llm_calls": 30},
        # one tool called over distinct inputs (one order after another) is a fan-out, not a loop
        "tool_loop": {"exempt_distinct_arguments": True},
        # a run that ends by handing off (any escalation tool) has ended; `escalation` reports the hand-off
        "no_final_answer": {"final_tools": [*no_final_answer.Config().final_tools, *escalation.DEFAULT_TOOL_NAMES]},
    },
}
# One knob of `tuned` at a time, to see what each changes.
ABLATION: dict[str, dict[str, Any]] = {
    f"{detector}.{knob}": {detector: {knob: value}}
    for detector, knobs in CONFIGS["tuned"].items() for knob, value in knobs.items()
}


@dataclass
class Run:
    """One trace and what the evaluation needs from it."""

    trace: TraceSpans
    task_id: str
    reward: float | None
    messages: list[int]  # every halod.message.index of the run (spans and root events)

    @property
    def failed(self) -> bool:
        return self.reward is not None and self.reward <= 0


@dataclass
class Evaluated:
    run: Run
    findings: list[Finding] = field(default_factory=list)

    def signals(self, exclude: frozenset[str] = frozenset()) -> set[str]:
        return {f.signal for f in self.findings if f.signal not in exclude}

    def indices(self) -> list[tuple[str, int]]:
        """(signal, message index of its evidence span) of every finding but failed_outcome."""
        found = []
        for finding in self.findings:
            if finding.signal == OUTCOME_SIGNAL or finding.span_id is None:
                continue
            span = self.run.trace.by_id.get(finding.span_id)
            index = span.get("halod.message.index") if span is not None else None
            if isinstance(index, int):
                found.append((finding.signal, index))
        return found


def load(path: Path) -> list[Run]:
    """The file's runs as `halod import` stores them: read_file (with the dataset's tools.json declared
    on every LLM span) -> normalize_request -> TraceSpans views."""
    tools = json.loads((path.parent / "tools.json").read_text())
    tables = [normalize_request(chunk.request, "import").spans
              for chunk in read_file(path, options=ReadOptions(tools=tools))]
    runs = []
    for trace in TraceSpans.from_table(pa.concat_tables(tables)):
        root = trace.root
        assert root is not None, f"{path.name}: trace {trace.trace_id} has no root"
        reward = root.get("outcome.reward")
        indices = {span.get("halod.message.index") for span in trace}
        indices.update(event.get("attributes", {}).get("halod.message.index") for event in root.event_list)
        runs.append(Run(trace, str(root.get("halod.run.task_id")),
                        float(reward) if isinstance(reward, int | float) else None,
                        sorted(i for i in indices if isinstance(i, int))))
    runs.sort(key=lambda run: run.trace.root.get("halod.run.index"))  # file order, as an import completes them
    return runs


def detect(runs_by_dataset: dict[str, list[Run]], detectors: list[Detector]) -> dict[str, list[Evaluated]]:
    """Every detector on every trace, as the analysis stage runs them: the outlier baselines are fed
    after each trace is judged, in file order."""
    context = DetectContext()
    learner = next((d for d in detectors if isinstance(d, outliers.Detector)), None)
    stats = learner.new_stats() if learner is not None else None
    if stats is not None:
        context.baselines = stats.baselines
    result: dict[str, list[Evaluated]] = {}
    for dataset, runs in runs_by_dataset.items():
        evaluated = []
        for run in runs:
            findings: list[Finding] = []
            for detector in detectors:
                findings += detector.detect(run.trace, context)
            if learner is not None and stats is not None:
                for key, value in learner.observations(run.trace):
                    stats.add(key, value)
            evaluated.append(Evaluated(run, findings))
        result[dataset] = evaluated
    return result


def ratio(num: int, den: int) -> float | None:
    return round(num / den, 3) if den else None


def signal_names(detectors: list[Detector]) -> list[str]:
    names: list[str] = []
    for detector in detectors:
        names += list(getattr(detector, "names", None) or [detector.name])
    return names


def per_signal(evaluated: list[Evaluated], names: list[str]) -> dict[str, dict[str, Any]]:
    failed_total = sum(e.run.failed for e in evaluated)
    table = {}
    for name in names:
        fired = [e for e in evaluated if name in e.signals()]
        failed = sum(e.run.failed for e in fired)
        table[name] = {"fired": len(fired), "failed": failed, "precision": ratio(failed, len(fired)),
                       "recall": ratio(failed, failed_total), "findings": sum(
                           f.signal == name for e in evaluated for f in e.findings)}
    return table


def any_signal(evaluated: list[Evaluated], exclude: frozenset[str]) -> dict[str, Any]:
    tp = fp = fn = tn = 0
    for e in evaluated:
        fired = bool(e.signals(exclude))
        if fired and e.run.failed:
            tp += 1
        elif fired:
            fp += 1
        elif e.run.failed:
            fn += 1
        else:
            tn += 1
    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    f1 = round(2 * precision * recall / (precision + recall), 3) if precision and recall else None
    return {"fired": tp + fp, "tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": precision, "recall": recall,
            "f1": f1, "base_rate": ratio(tp + fn, len(evaluated))}


def localization(evaluated: list[Evaluated], labels: list[dict[str, Any]]) -> dict[str, Any]:
    by_task = {e.run.task_id: e for e in evaluated}
    categories: dict[str, dict[str, Any]] = defaultdict(lambda: {"labels": 0, "localized": 0, "chance": 0.0})
    by_signal: Counter[str] = Counter()
    missing: list[dict[str, Any]] = []
    details = []
    root_causes = {"labels": 0, "localized": 0, "chance": 0.0}
    for trajectory in labels:
        task_id = str(trajectory["trajectory_id"])
        root_cause = (trajectory.get("root_cause") or {}).get("failure_id")
        e = by_task.get(task_id)
        for failure in trajectory["failures"]:
            step, category = failure["step_number"], failure["failure_category"]
            if e is None:
                missing.append({"trajectory_id": trajectory["trajectory_id"], "step": step, "category": category})
                continue
            indices = e.indices()
            hits = sorted({signal for signal, index in indices if abs(index - step) <= 1})
            near = {index + delta for _, index in indices for delta in (-1, 0, 1)}
            chance = sum(m in near for m in e.run.messages) / len(e.run.messages) if e.run.messages else 0.0
            rows = [categories[category], categories["all"]]
            if failure.get("failure_id") == root_cause:
                rows.append(root_causes)
            for row in rows:
                row["labels"] += 1
                row["localized"] += bool(hits)
                row["chance"] += chance
            by_signal.update(hits)
            details.append({"trajectory_id": trajectory["trajectory_id"], "step": step, "category": category,
                            "reward": e.run.reward, "localized_by": hits,
                            "findings": sorted(f"{signal}@{index}" for signal, index in indices)})
    table = {}
    for name, row in sorted(categories.items(), key=lambda item: (item[0] == "all", -item[1]["labels"], item[0])):
        table[name] = {**row, "share": ratio(row["localized"], row["labels"]), "chance": round(row["chance"], 1)}
    root_causes["share"] = ratio(root_causes["localized"], root_causes["labels"])
    root_causes["chance"] = round(root_causes["chance"], 1)
    return {"categories": table, "root_causes": root_causes, "by_signal": dict(by_signal.most_common()),
            "missing": missing, "labels": details}


def evaluate() -> dict[str, Any]:
    started = time.perf_counter()
    runs = {name: load(path) for name, path in DATASET_FILES.items()}
    loaded = time.perf_counter()
    labels = json.loads(LABELS.read_text())
    report: dict[str, Any] = {
        "datasets": {name: {"traces": len(rs), "failed": sum(r.failed for r in rs),
                            "spans": sum(len(r.trace) for r in rs)} for name, rs in runs.items()},
        "configs": CONFIGS, "signals": {}, "any_signal": {}, "localization": {},
    }
    detect_seconds = 0.0
    for config_name, settings in CONFIGS.items():
        detectors = build_detectors(settings)
        names = signal_names(detectors)
        t0 = time.perf_counter()
        evaluated = detect(runs, detectors)
        detect_seconds += time.perf_counter() - t0
        report["signals"][config_name] = {d: per_signal(ev, names) for d, ev in evaluated.items()}
        report["any_signal"][config_name] = {
            d: {variant: any_signal(ev, exclude) for variant, (_, exclude) in VARIANTS.items()}
            for d, ev in evaluated.items()}
        report["localization"][config_name] = localization(evaluated["retail"], labels)
    report["ablation"] = {}
    for label, settings in {"default": {}, **ABLATION, "tuned": CONFIGS["tuned"]}.items():
        t0 = time.perf_counter()
        evaluated = detect(runs, build_detectors(settings))
        detect_seconds += time.perf_counter() - t0
        loc = localization(evaluated["retail"], labels)["categories"]["all"]
        report["ablation"][label] = {
            **{d: any_signal(ev, VARIANTS["excluding_failed_outcome"][1]) for d, ev in evaluated.items()},
            "localized": loc["localized"], "labels": loc["labels"]}
    report["seconds"] = {"load": round(loaded - started, 2), "detect": round(detect_seconds, 2),
                         "total": round(time.perf_counter() - started, 2)}
    return report


# --- markdown ------------------------------------------------------------------------------------


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table; columns holding only numbers (or nothing) are right-aligned."""
    numeric = [all(row[i] is None or isinstance(row[i], int | float) for row in rows) for i in range(len(header))]
    align = "|".join("--:" if numeric[i] and i else "---" for i in range(len(header)))
    lines = ["| " + " | ".join(header) + " |", f"|{align}|"]
    lines += ["| " + " | ".join(fmt(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def render(report: dict[str, Any]) -> str:
    configs = list(report["configs"])
    out = ["## Datasets", ""]
    out.append(markdown_table(
        ["dataset", "traces", "failed (reward 0)", "spans"],
        [[name, d["traces"], d["failed"], d["spans"]] for name, d in report["datasets"].items()]))
    out += ["", "`tuned` (`analysis.signals` settings; `default` is `{}`):", ""]
    for detector, knobs in report["configs"]["tuned"].items():
        for knob, value in knobs.items():
            shown = value
            if detector == "no_final_answer" and knob == "final_tools":
                shown = "the defaults + escalation's default tool_names (transfer_to_human_agents, escalate*, ...)"
            out.append(f"- `{detector}.{knob}`: {json.dumps(shown) if not isinstance(shown, str) else shown}")
    out.append("")

    out += ["## 1. Traces each signal fires on", "",
            "Cells: fired / of which failed (precision = failed / fired, recall = failed / all failed runs).", ""]
    for dataset in report["datasets"]:
        names = list(report["signals"][configs[0]][dataset])
        rows = []
        for name in names:
            row: list[Any] = [f"`{name}`"]
            for config in configs:
                s = report["signals"][config][dataset][name]
                row += [f"{s['fired']} / {s['failed']}", s["precision"], s["recall"]]
            rows.append(row)
        header = ["signal"] + [f"{c}: {h}" for c in configs for h in ("fired / failed", "precision", "recall")]
        out += [f"### {dataset} ({report['datasets'][dataset]['traces']} traces, "
                f"{report['datasets'][dataset]['failed']} failed)", "", markdown_table(header, rows), ""]

    out += ["## 2. Any failure signal vs `reward == 0` (trace level)", ""]
    rows = []
    for dataset in report["datasets"]:
        for which, (label, _) in VARIANTS.items():
            for config in configs:
                a = report["any_signal"][config][dataset][which]
                rows.append([dataset, label, config, a["fired"], a["tp"], a["fp"], a["fn"], a["precision"],
                             a["recall"], a["f1"], a["base_rate"]])
    out += [markdown_table(["dataset", "signals", "config", "fired", "TP", "FP", "FN", "precision", "recall", "F1",
                            "base rate"], rows), "",
            "`all signals`: recall is 1 by construction (`failed_outcome` reads the reward). `all but "
            "failed_outcome`: what the behavioural detectors see without the outcome label. `mechanical only`: also "
            "without " + ", ".join(f"`{name}`" for name in sorted(CONVERSATIONAL)) + " (how the conversation "
            "ended). `base rate`: the share of failed runs, i.e. the precision of flagging every trace.", ""]

    out += ["### One knob at a time (excl. failed_outcome)", ""]
    datasets = list(report["datasets"])
    rows = []
    for label, row in report["ablation"].items():
        cells: list[Any] = [f"`{label}`"]
        for dataset in datasets:
            a = row[dataset]
            cells += [a["fired"], a["precision"], a["recall"], a["f1"]]
        rows.append([*cells, f"{row['localized']} / {row['labels']}"])
    header = ["config"] + [f"{d}: {h}" for d in datasets for h in ("fired", "P", "R", "F1")] + ["labels localized"]
    out += [markdown_table(header, rows), ""]

    out += ["## 3. AgentRx step labels localized within one step (excl. failed_outcome)", ""]
    first = report["localization"][configs[0]]
    rows = []
    for category in first["categories"]:
        row = [category if category != "all" else "**all**", first["categories"][category]["labels"]]
        for config in configs:
            c = report["localization"][config]["categories"][category]
            row += [c["localized"], c["share"], c["chance"]]
        rows.append(row)
    row = ["root causes only", first["root_causes"]["labels"]]
    for config in configs:
        c = report["localization"][config]["root_causes"]
        row += [c["localized"], c["share"], c["chance"]]
    rows.append(row)
    header = ["category", "labels"] + [f"{c}: {h}" for c in configs for h in ("localized", "share", "chance")]
    out += [markdown_table(header, rows), ""]
    for config in configs:
        loc = report["localization"][config]
        out.append(f"- {config}: localizing signals (labels hit): "
                   + (", ".join(f"`{s}` {n}" for s, n in loc["by_signal"].items()) or "none"))
    missing = first["missing"]
    out.append(f"- missing: {len(missing)} labels whose trajectory is not in the dataset ("
               + ", ".join(f"trajectory {m['trajectory_id']} step {m['step']} {m['category']}" for m in missing)
               + ")")
    out += ["", "### Per label (" + configs[-1] + ")", ""]
    rows = [[lab["trajectory_id"], lab["step"], lab["category"], ", ".join(lab["localized_by"]) or "-",
             " ".join(lab["findings"]) or "-"] for lab in report["localization"][configs[-1]]["labels"]]
    out += [markdown_table(["trajectory", "step", "category", "localized by", "findings (signal@message index)"],
                           rows), ""]
    s = report["seconds"]
    out.append(f"Load (read + normalize + views) {s['load']} s, detection (all configs) {s['detect']} s, "
               f"total {s['total']} s.")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of markdown tables")
    args = parser.parse_args(argv)
    for path in (*DATASET_FILES.values(), LABELS):
        if not path.exists():
            print(f"missing dataset file: {path}", file=sys.stderr)
            return 2
    report = evaluate()
    print(json.dumps(report, indent=1) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
