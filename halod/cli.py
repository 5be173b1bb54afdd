"""The `halod` command line: run, validate, query, import, replay, flush, signals, version.

Every command takes --config (default: $HALOD_CONFIG, else the embedded default config), so the CLI
finds the same store and admin address as the daemon it talks to.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from halod import __version__
from halod.admin import json_default
from halod.config import ConfigError, HalodConfig, load_config
from halod.store import QueryError, QueryResult


def _load(args: argparse.Namespace) -> HalodConfig:
    return load_config(args.config or None)


def cmd_run(args: argparse.Namespace) -> int:
    from halod.daemon import run_daemon
    from halod.telemetry import configure_logging

    config = _load(args)
    logs = config.service.telemetry.logs
    configure_logging(logs.level, logs.encoding)
    return asyncio.run(run_daemon(config))


def cmd_validate(args: argparse.Namespace) -> int:
    config = _load(args)
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{config.source}: valid ({len(config.service.pipelines)} pipeline(s), "
          f"{len(config.components)} component(s))")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from halod.adminclient import query_store

    config = _load(args)
    result, _ = query_store(config, args.sql, args.max_rows)
    if args.json:
        for row in result.rows:
            sys.stdout.write(json.dumps(dict(zip(result.columns, row, strict=True)), default=json_default) + "\n")
    else:
        sys.stdout.write(format_table(result, args.max_width))
    if result.truncated:
        print(f"(output truncated to {args.max_rows} rows; use --max-rows)", file=sys.stderr)
    return 0


def _read_options(args: argparse.Namespace) -> Any:
    from halod.formats import ReadOptions

    settings: dict[str, Any] = {}
    if args.tools:
        tools = json.loads(Path(args.tools).read_text())
        if not isinstance(tools, list):
            raise ValueError(f"--tools {args.tools}: expected a JSON list of tool definitions")
        settings["tools"] = tools
    if args.transcript_start:
        start = datetime.fromisoformat(args.transcript_start.replace("Z", "+00:00"))
        if start.tzinfo is None:
            raise ValueError("--transcript-start needs a time zone, e.g. 2025-01-01T00:00:00Z")
        settings["transcript_start_ns"] = int(start.timestamp()) * 10**9
    if args.transcript_step is not None:
        settings["transcript_step_ns"] = int(args.transcript_step * 1e9)
    if args.service_name:
        settings["service_name"] = args.service_name
    return ReadOptions(**settings)


def _print_problem(problem: Any) -> None:
    print(f"warning: skipped {problem}", file=sys.stderr)


def _quiet_logging() -> None:
    """Client commands log only warnings and errors, to stderr (stdout carries their output)."""
    from halod.telemetry import configure_logging

    configure_logging("warning", "console")


def cmd_import(args: argparse.Namespace) -> int:
    from halod.importer import run_import

    _quiet_logging()
    config = _load(args)
    options = _read_options(args)
    summary = asyncio.run(run_import(config, [Path(p) for p in args.files], args.format, options, args.pipeline,
                                     on_problem=_print_problem, flush=not args.no_flush))
    if args.json:
        print(json.dumps({"via": summary.via, **summary.totals(), "problems": summary.problems,
                          "flush": summary.flush,
                          "files": [{**vars(f), "problems": [str(p) for p in f.problems]} for f in summary.files]}))
    else:
        for file in summary.files:
            print(f"{file.path}: {file.format or '?'}, {file.spans:,} spans read, {file.stored:,} stored, "
                  f"{file.duplicates:,} already stored, {file.rejected:,} rejected, {len(file.problems)} problem(s)")
        totals = summary.totals()
        print(f"imported into {summary.via}: {totals['stored']:,} new spans, {totals['duplicates']:,} already "
              f"stored, {totals['rejected']:,} rejected, {summary.problems} problem(s)")
        if summary.flush is not None:
            _print_flush(summary.flush)
    return 0 if summary.complete else 2


def _print_flush(result: dict[str, Any]) -> None:
    print(f"flushed: {result['traces_completed']:,} trace(s) completed, {result['windows_closed']} window(s) "
          f"closed, {len(result['trips'])} trigger trip(s)")
    for trip in result["trips"]:
        print(f"  trip {trip['rule']}: {trip['dimension']}={trip['value']} {trip['reason']}")


def cmd_flush(args: argparse.Namespace) -> int:
    import dataclasses

    from halod.adminclient import AdminClient

    _quiet_logging()
    config = _load(args)
    client = AdminClient.from_config(config)
    if client.is_up():
        result = client.flush()
    else:
        from halod.daemon import Daemon

        async def embedded() -> dict[str, Any]:
            daemon = Daemon(config)
            await daemon.start(serve=False)
            try:
                return dataclasses.asdict(await daemon.flush())
            finally:
                await daemon.shutdown()

        result = asyncio.run(embedded())
    if args.json:
        print(json.dumps(result))
    else:
        _print_flush(result)
    return 0


def cmd_signals(args: argparse.Namespace) -> int:
    from halod.adminclient import query_store

    config = _load(args)
    if args.trace:
        if not all(c in "0123456789abcdef" for c in args.trace.lower()) or len(args.trace) != 32:
            raise ValueError(f"--trace {args.trace!r}: a trace id is 32 hex characters")
        sql = ("SELECT signal, severity, tool, span_id, details FROM signals "
               f"WHERE trace_id = '{args.trace.lower()}' ORDER BY signal, span_id")
    else:
        if args.window:
            start = datetime.fromisoformat(args.window.replace("Z", "+00:00"))
            if start.tzinfo is None:
                raise ValueError("--window needs a time zone, e.g. 2026-11-24T10:00:00Z")
            at_ns = int(start.timestamp() * 1e9)
            window = f"(SELECT max(window_start_ns) FROM window_stats WHERE window_start_ns <= {at_ns})"
        else:
            window = "(SELECT max(window_start_ns) FROM window_stats WHERE closed)"
        sql = ("SELECT make_timestamp(window_start_ns // 1000) AS window_start, dimension, value, signal, traces, "
               "affected_traces AS affected, round(rate, 4) AS rate FROM window_stats "
               f"WHERE window_start_ns = {window} AND affected_traces > 0 "
               "ORDER BY dimension = 'all' DESC, dimension, rate DESC, signal")
    result, _ = query_store(config, sql, args.max_rows)
    sys.stdout.write(format_table(result, 60))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from halod.replay import progress_printer, replay_files

    _quiet_logging()
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    progress = progress_printer()
    summary = asyncio.run(replay_files(
        [Path(p) for p in args.files], args.endpoint, args.protocol, args.encoding, args.rate, args.format,
        _read_options(args), headers, on_progress=progress, on_problem=_print_problem,
    ))
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    print(f"replayed to {args.endpoint} ({args.protocol}): {summary.spans:,} spans in {summary.requests:,} requests, "
          f"{summary.seconds:.1f} s ({summary.spans_per_second:,.0f} spans/s), {summary.rejected:,} rejected, "
          f"{summary.retries} retries, {len(summary.problems)} problem(s)")
    return 0 if not summary.problems and not summary.rejected else 2


def cmd_version(args: argparse.Namespace) -> int:
    print(f"halod {__version__}")
    return 0


def _cell(value: Any, max_width: int) -> str:
    text = "NULL" if value is None else value if isinstance(value, str) else json.dumps(value, default=json_default)
    text = text.replace("\n", "\\n")
    return text if len(text) <= max_width else text[: max_width - 1] + "…"


def format_table(result: QueryResult, max_width: int = 60) -> str:
    cells = [[_cell(value, max_width) for value in row] for row in result.rows]
    widths = [max([len(name)] + [len(row[i]) for row in cells]) for i, name in enumerate(result.columns)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    out = [line, "| " + " | ".join(n.ljust(w) for n, w in zip(result.columns, widths, strict=True)) + " |", line]
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    out += [line, f"{len(cells)} row(s)"]
    return "\n".join(out) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="halod", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config_help = "YAML config (default: $HALOD_CONFIG, else the embedded default)"

    def command(name: str, help_: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_, description=help_)
        sub.add_argument("--config", "-c", default=os.environ.get("HALOD_CONFIG"), help=config_help)
        return sub

    command("run", "run the daemon until SIGINT/SIGTERM").set_defaults(func=cmd_run)
    command("validate", "validate a config file and report every problem").set_defaults(func=cmd_validate)
    query = command("query", "run a read-only SQL query on the store (via the daemon when it runs)")
    query.add_argument("sql", help='e.g. "SELECT name, count(*) FROM spans GROUP BY 1"')
    query.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    query.add_argument("--max-rows", type=int, default=1000, help="rows to return at most (default 1000)")
    query.add_argument("--max-width", type=int, default=60, help="table cells are cut at this width")
    query.set_defaults(func=cmd_query)

    from halod import formats

    def source_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("files", nargs="+", metavar="FILE", help="trace files (docs/formats.md)")
        sub.add_argument("--format", choices=formats.FORMATS, help="skip detection and read every file as this format")
        sub.add_argument("--tools", metavar="TOOLS_JSON",
                         help="OpenAI tool definitions offered to the agent (transcripts carry none)")
        sub.add_argument("--transcript-start", metavar="ISO_TIME",
                         help="made-up start of the first transcript run (default 2025-01-01T00:00:00Z)")
        sub.add_argument("--transcript-step", type=float, metavar="SECONDS",
                         help="made-up duration of one transcript message (default 1)")
        sub.add_argument("--service-name", help="service.name for formats that carry none")

    imports = command("import", "import trace files into the store (via the daemon when it runs); "
                                "exit 2 when some records were skipped")
    source_options(imports)
    imports.add_argument("--pipeline", help="pipeline whose processors the spans go through (default: traces)")
    imports.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    imports.add_argument("--no-flush", action="store_true",
                         help="do not complete the imported traces and close their windows at the end")
    imports.set_defaults(func=cmd_import)
    replay = commands.add_parser("replay", help="send trace files over OTLP to halod or any collector",
                                 description="send trace files over OTLP to halod or any collector; "
                                             "exit 2 when records were skipped or spans rejected")
    source_options(replay)
    replay.add_argument("--endpoint", required=True, help="host:port or URL, e.g. 127.0.0.1:4317 or "
                                                         "http://127.0.0.1:4318/v1/traces (https: TLS)")
    replay.add_argument("--protocol", choices=("grpc", "http"), default="grpc", help="default grpc")
    replay.add_argument("--encoding", choices=("protobuf", "json"), default="protobuf",
                        help="body encoding over http (default protobuf)")
    replay.add_argument("--rate", type=float, help="spans per second at most (default: as fast as acknowledged)")
    replay.add_argument("--token", default=os.environ.get("HALOD_TOKEN"),
                        help="bearer token (default $HALOD_TOKEN)")
    replay.set_defaults(func=cmd_replay)
    flush = command("flush", "complete every open trace, close every window and evaluate the triggers")
    flush.add_argument("--json", action="store_true", help="print the result as one JSON object")
    flush.set_defaults(func=cmd_flush)
    signals = command("signals", "failure signals: of one trace, or the rates of a window (default: the last "
                                 "closed one)")
    signals.add_argument("--trace", help="the signals of this trace (32 hex characters)")
    signals.add_argument("--window", metavar="ISO_TIME", help="the window containing this time")
    signals.add_argument("--max-rows", type=int, default=200, help="rows to show at most (default 200)")
    signals.set_defaults(func=cmd_signals)
    commands.add_parser("version", help="print the version").set_defaults(func=cmd_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        for warning in exc.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        return 1
    except QueryError as exc:
        print(f"error: query failed: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:  # a file that cannot be read, a bad option value
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        from halod.adminclient import AdminError
        from halod.replay import ReplayError

        if isinstance(exc, AdminError | ReplayError):
            print(f"error: {exc}", file=sys.stderr)
            return 1
        raise
    return code


if __name__ == "__main__":
    sys.exit(main())
