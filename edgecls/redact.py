"""Secrets never leave the process: the one function every writer of config values (files,
checkpoints, trackers, console, worker command lines) passes them through.

A storage URL such as `postgresql://user:password@host/db` or `...?password=...` keeps its
shape with the password replaced, so a person can still tell which database a run used.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "***"

# scheme://user:PASSWORD@host: SQLAlchemy takes everything up to the last `@` as the password,
# `/` included, so the match runs to the last `@` of the text.
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/@?#\s]*):(?!\*\*\*@).*@")
# ?password=...&  or  ;pwd=...  (query strings and ODBC-style connection strings)
_QUERY = re.compile(
    r"(?i)([?&;](?:password|passwd|pwd|secret|token|api_key|apikey|access_key)=)[^&;#\s]*"
)


def redact(value: Any) -> Any:
    """`value` with every password in a URL replaced by ***; dicts, lists and tuples are
    walked. What holds no secret comes back as the very same object (a checkpoint's state dicts
    keep their type and metadata)."""
    if isinstance(value, str):
        text = _QUERY.sub(rf"\1{REDACTED}", _USERINFO.sub(rf"\1:{REDACTED}@", value))
        return value if text == value else text
    if isinstance(value, dict):
        items = {key: redact(item) for key, item in value.items()}
        return value if all(items[key] is value[key] for key in value) else items
    if isinstance(value, (list, tuple)):
        items = [redact(item) for item in value]
        if all(new is old for new, old in zip(items, value, strict=True)):
            return value
        if isinstance(value, list):
            return items
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    return value


def is_redacted(url: str) -> bool:
    """A URL read back from a run folder, whose password is no longer known."""
    return f":{REDACTED}@" in url or f"={REDACTED}" in url
