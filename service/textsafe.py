"""Text that can always be encoded: checks for request input, scrubbing for output.

JSON lets a client send a lone UTF-16 surrogate (`"\\udfff"`): Python decodes it into a
`str` that cannot be encoded as UTF-8, so it fails wherever it is written (the model
request, a log line, the response). Contract:

- `find_unencodable(data)` walks parsed JSON (dicts, lists, strings, keys included) and
  returns the dotted path of the first string that is not valid Unicode text, or None;
  request models call it before any other validation, so such input is a 400/422 with
  `param` naming the field, never a 5xx.
- `scrub(obj)` replaces unencodable characters (U+FFFD) in every string of a JSON-like
  value; `dumps(obj)` is `json.dumps` that cannot fail on text. Output paths (error
  bodies, SSE frames, responses) use them, because a model or a tool may produce such
  strings too.
- `has_visible_text(s)`: False when `s` holds only whitespace, control, format
  (zero-width) and other invisible characters; "blank" in request validation means this.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any

__all__ = [
    "dumps", "find_unencodable", "has_visible_text", "is_encodable", "model_json", "scrub",
]

# Categories that draw nothing: separators, controls, format (U+200B..U+200F, U+2060,
# U+FEFF ...), surrogates, private use, unassigned, and combining marks on their own.
_INVISIBLE_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co", "Cn", "Mn", "Me"})
# Letters and symbols that render as blank space although their category says otherwise.
_BLANK_LOOKING = frozenset("\u115f\u1160\u3164\uffa0\u2800\u180e\u17b4\u17b5")


def is_encodable(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def find_unencodable(data: Any, path: str = "") -> str | None:
    """Dotted path (e.g. `messages.0.content`) of the first unencodable string, else None."""
    if isinstance(data, str):
        return None if is_encodable(data) else (path or "body")
    if isinstance(data, dict):
        for key, value in data.items():
            key_text = str(key)
            where = f"{path}.{key_text}" if path else key_text
            if isinstance(key, str) and not is_encodable(key):
                return where.encode("utf-8", "replace").decode("utf-8")
            found = find_unencodable(value, where)
            if found is not None:
                return found
        return None
    if isinstance(data, list | tuple):
        for i, value in enumerate(data):
            found = find_unencodable(value, f"{path}.{i}" if path else str(i))
            if found is not None:
                return found
    return None


def _clean(s: str) -> str:
    if is_encodable(s):
        return s
    return s.encode("utf-8", "replace").decode("utf-8")  # '?' per bad character


def scrub(obj: Any) -> Any:
    """A copy of a JSON-like value whose strings all encode (bad characters become '?')."""
    if isinstance(obj, str):
        return _clean(obj)
    if isinstance(obj, dict):
        return {scrub(k) if isinstance(k, str) else k: scrub(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [scrub(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """`json.dumps` (compact, ensure_ascii=False) whose result always encodes as UTF-8."""
    kwargs.setdefault("ensure_ascii", False)
    kwargs.setdefault("separators", (",", ":"))
    text = json.dumps(obj, **kwargs)
    if is_encodable(text):
        return text
    return json.dumps(scrub(obj), **kwargs)


def has_visible_text(s: str) -> bool:
    for ch in s:
        if ch in _BLANK_LOOKING:
            continue
        if unicodedata.category(ch) not in _INVISIBLE_CATEGORIES:
            return True
    return False


def model_json(model: Any) -> str:
    """A pydantic model's JSON, scrubbed when some string in it does not encode."""
    try:
        text: str = model.model_dump_json()
    except ValueError:  # PydanticSerializationError: a string that cannot be encoded
        return dumps(model.model_dump(mode="python"), default=str)
    return text
