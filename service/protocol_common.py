"""What every request model of the gateway shares: strict types, text that encodes, and
"not blank" meaning visible characters.

`RequestModel` is the base of each route's root body model:
- `strict=True`: no coercion (`"samples": "4"`, `"samples": true`, `"samples": 4.0`,
  `"stream": "yes"` are refused: an integer field takes only a JSON number written as an
  integer, in every request model, nested ones included; an int is still accepted where
  a float is expected),
- `extra="forbid"`: unknown fields are refused,
- before any field is validated, every string anywhere in the body (keys too, extra
  fields too) must encode as UTF-8: a lone surrogate is an `invalid_unicode` error whose
  `where` names the field, which the error handler turns into a 400/422 with that `param`.
`VisibleText` is a `str` that must hold at least one visible character
(`service.textsafe.has_visible_text`).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError

from service.textsafe import find_unencodable, has_visible_text

__all__ = ["JSON_SAFE_INT", "RequestModel", "VisibleText", "check_visible"]

JSON_SAFE_INT = 2**53 - 1
"""Bound of integer fields such as `seed`: beyond 2**53 a JSON number is not an exact
double, so a client (or a schema validator) that reads numbers as doubles could send a
value that it believes is in range and that is not (-9223372036854776000 reads as -2**63)."""

UNENCODABLE_MESSAGE = (
    "contains a lone UTF-16 surrogate (\\ud800-\\udfff), which is not valid Unicode text; "
    "send the text as UTF-8 (or escape surrogate pairs completely)"
)


class RequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _text_must_encode(cls, data: Any) -> Any:
        where = find_unencodable(data)
        if where is not None:
            raise PydanticCustomError("invalid_unicode", UNENCODABLE_MESSAGE, {"where": where})
        return data


def check_visible(value: str) -> str:
    if not has_visible_text(value):
        raise ValueError(
            "must contain visible characters (not only whitespace, control or zero-width "
            "characters)"
        )
    return value


VisibleText = Annotated[str, AfterValidator(check_visible)]
