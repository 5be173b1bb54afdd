"""Config of the `file` receiver (names follow the Collector's filelog receiver where they overlap)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from halod.formats import FORMATS
from halod.pull import PullConfig
from halod.units import Duration


class FileReceiverConfig(PullConfig):
    include: list[str] = Field(
        default_factory=list,
        description="Glob patterns of the files to read (`**` matches folders at any depth), e.g. "
        "`/var/log/agents/*.jsonl`. New files that match are picked up at the next poll.",
    )
    exclude: list[str] = Field(default_factory=list, description="Glob patterns of files to leave alone.")
    format: str | None = Field(
        default=None, description=f"Read every file as this format ({', '.join(FORMATS)}); detected per file "
        "when omitted (docs/formats.md).",
    )
    start_at: Literal["beginning", "end"] = Field(
        default="beginning",
        description="Where to start in the files that exist when the receiver first runs (`end`: only what is "
        "appended later). Files created later are always read from the beginning; after a restart every "
        "file resumes at its remembered position.",
    )
    poll_interval: Duration = Field(default=1.0, gt=0, description="How often the files are checked for new data.")
    settle_time: Duration = Field(
        default=2.0, ge=0,
        description="A file in a whole-document format (a JSON list of transcripts, an SDK span dump, one "
        "protobuf request) is read once it has not changed for this long, so a half-written file is not "
        "read; line formats are read as lines complete.",
    )
    tools: Path | None = Field(
        default=None, description="JSON file of OpenAI tool definitions offered to the agent of transcripts."
    )
    service_name: str | None = Field(default=None, description="service.name for formats that carry none.")

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str | None) -> str | None:
        if value is not None and value not in FORMATS:
            raise ValueError(f"unknown format {value!r}; one of {', '.join(FORMATS)}")
        return value

    @field_validator("tools")
    @classmethod
    def _tools_file(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"file {str(path)!r} does not exist")
        return path
