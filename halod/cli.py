"""The `halod` command line: run, validate, query, version.

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
    except Exception as exc:
        from halod.adminclient import AdminError

        if isinstance(exc, AdminError):
            print(f"error: {exc}", file=sys.stderr)
            return 1
        raise
    return code


if __name__ == "__main__":
    sys.exit(main())
