"""One-line messages for invalid params: pydantic's validation errors as
``source: section.key: what is wrong (got X)``, one part per problem (``ganforge.config``
raises them as ``ConfigError``)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ValidationError


def short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return (
        text if len(text) <= limit else text[: limit - 5] + "...'" * isinstance(value, str) + "..."
    )


def format_error(
    err: ValidationError,
    root: type[BaseModel],
    source: str,
    overridden: frozenset[str] = frozenset(),
) -> str:
    """One part per problem, ``source: section.key: what is wrong (got X)``; a key set with
    ``--set`` is named as ``--set section.key``, so the user knows where the value came from."""
    parts: list[str] = []
    seen: dict[str, int] = {}  # a union's branches (auto | a number) report one key once
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not _union_branch(p))
        origin = "--set" if ".".join(str(p) for p in e["loc"][:2]) in overridden else f"{source}:"
        if e["type"] == "extra_forbidden":
            section_model = _model_at(root, e["loc"][:-1])
            allowed = ", ".join(section_model.model_fields) if section_model else "?"
            parts.append(f"{origin} {loc}: unknown key (allowed: {allowed})")
            continue
        msg = e["msg"].removeprefix("Value error, ")
        if msg.startswith(loc + ":") or re.match(r"^[a-z_]+\.[a-z_]+: ", msg):
            parts.append(f"{origin} {msg}")  # our own validators already name the key
        else:
            got = e.get("input")
            got_s = "" if isinstance(got, dict) else f" (got {short(got)})"
            if loc in seen:  # "Input should be 'auto'" joins the number branch's message
                first = parts[seen[loc]].replace(got_s, "")
                parts[seen[loc]] = f"{first}, or {msg[0].lower()}{msg[1:]}{got_s}"
                continue
            seen[loc] = len(parts)
            parts.append(f"{origin} {loc or 'params'}: {msg}{got_s}")
    return "; ".join(parts)


def _union_branch(part: Any) -> bool:
    """pydantic's name for one branch of a union type in an error location."""
    return isinstance(part, str) and part.startswith(("literal[", "constrained-"))


def _model_at(root: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The section model at ``loc`` inside ``root`` (for its list of allowed keys)."""
    model = root
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not (
            isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        ):
            return None
        model = field.annotation
    return model
