"""Config value types shared by every component: durations, byte sizes and host:port endpoints.

They accept the spellings Collector users already write (``200ms``, ``10s``, ``5m``, ``7d``;
``16MiB``, ``10GB``) as well as plain numbers (seconds, bytes), and normalize to float seconds and
int bytes so the code never juggles units.
"""

from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BeforeValidator

_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m|h|d)\s*$")
_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*$", re.IGNORECASE)
_ENDPOINT = re.compile(r"^(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]*):(?P<port>\d{1,5})$")


def parse_duration(value: Any) -> float:
    """Seconds from ``1.5`` / ``"1.5"`` (seconds) or ``"200ms"``, ``"10s"``, ``"5m"``, ``"2h"``, ``"7d"``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 10s, 200ms, 5m or 7d")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            match = _DURATION.match(text)
            if not match:
                raise ValueError(f"invalid duration {value!r}: expected e.g. 10s, 200ms, 5m or 7d") from None
            seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    else:
        raise ValueError("expected a duration such as 10s, 200ms, 5m or 7d")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_byte_size(value: Any) -> int:
    """Bytes from ``1048576`` or ``"16MiB"``, ``"20MB"``, ``"512KiB"`` (binary and decimal units)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 16MiB or 1048576")
    if isinstance(value, int):
        size = value
    elif isinstance(value, float) and value.is_integer():
        size = int(value)
    elif isinstance(value, str):
        match = _SIZE.match(value)
        if not match:
            raise ValueError(f"invalid size {value!r}: expected e.g. 16MiB, 20MB or a number of bytes")
        size = int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").lower()])
    else:
        raise ValueError("expected a size such as 16MiB or 1048576")
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size


def parse_endpoint(value: Any) -> str:
    """Validate ``host:port`` (``[::1]:4317`` for IPv6); an empty host means every interface."""
    if not isinstance(value, str) or not (match := _ENDPOINT.match(value.strip())):
        raise ValueError(f"invalid endpoint {value!r}: expected host:port, e.g. 127.0.0.1:4317")
    if not 0 <= int(match.group("port")) <= 65535:
        raise ValueError(f"invalid port in {value!r}: must be 0-65535")
    return value.strip()


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """``"127.0.0.1:4317"`` -> ``("127.0.0.1", 4317)``; brackets are stripped from IPv6 hosts."""
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def parse_base_url(value: Any) -> str:
    """An http(s) URL that paths are appended to: scheme and host required, no query or fragment,
    trailing slashes dropped (a path prefix, e.g. behind a proxy, is kept)."""
    if not isinstance(value, str):
        raise ValueError(f"expected an http(s) URL, got {value!r}")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"invalid URL {value!r}: expected an http(s) URL such as https://host:port")
    if parts.query or parts.fragment:
        raise ValueError(f"invalid URL {value!r}: a base URL takes no query or fragment")
    return value.strip().rstrip("/")


Duration = Annotated[float, BeforeValidator(parse_duration)]
ByteSize = Annotated[int, BeforeValidator(parse_byte_size)]
Endpoint = Annotated[str, BeforeValidator(parse_endpoint)]
BaseURL = Annotated[str, BeforeValidator(parse_base_url)]
