"""A run's params: a JSON object an operator hands to one run, checked against the model the
task may declare (`@job(..., params=MyParams)`).

The scheduler process holds no task classes (process mode), so it never validates params
itself: it asks a worker (the `validate` message), where the model and its validators live, and
the worker validates them again just before the body runs. Small and dependency-free apart from
pydantic, as worker processes import it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from pydantic import BaseModel, ValidationError

#: The most compact JSON a run's params may take.
MAX_PARAMS_BYTES: Final = 64 * 1024

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


class ParamsError(ValueError):
    """Params that cannot be a run's params at all (not plain JSON)."""


class ParamsTooLarge(ParamsError):
    """Params over `MAX_PARAMS_BYTES` of JSON."""


def encode_params(params: Mapping[str, Any]) -> str:
    """`params` as compact JSON; `ParamsError` if they are not plain JSON or too large."""
    try:
        text = _encode(dict(params))
        size = len(text.encode())  # lone surrogates cannot be stored: refused here
    except (TypeError, ValueError, RecursionError) as error:
        raise ParamsError(f"params must be a plain JSON object: {error}") from None
    if size > MAX_PARAMS_BYTES:
        raise ParamsTooLarge(
            f"params take {size} bytes of JSON; at most {MAX_PARAMS_BYTES} are allowed"
        )
    return text


def decode_params(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    value = json.loads(text)
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class ParamsProblem:
    """Why params do not validate against a job's model, as pydantic says it."""

    model: str
    #: pydantic's errors: {"loc": [...], "msg": ..., "type": ...}, JSON-able.
    errors: tuple[dict[str, Any], ...]
    text: str

    def as_data(self) -> dict[str, Any]:
        return {"model": self.model, "errors": list(self.errors), "text": self.text}

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> ParamsProblem:
        return cls(str(data["model"]), tuple(data["errors"]), str(data["text"]))


def validate_params(model: type[BaseModel], params: Mapping[str, Any]) -> BaseModel | ParamsProblem:
    """The validated model, or pydantic's reasons why not."""
    try:
        return model.model_validate(dict(params))
    except ValidationError as error:
        errors = tuple(
            {"loc": [str(p) for p in e["loc"]], "msg": str(e["msg"]), "type": str(e["type"])}
            for e in error.errors(include_url=False)
        )
        return ParamsProblem(model.__name__, errors, str(error))


def model_schema(model: type[BaseModel]) -> str | None:
    """The model's JSON schema as text, for the metadata (None where pydantic cannot say)."""
    try:
        return _encode(model.model_json_schema())
    except Exception:  # a type pydantic has no schema for: the worker still validates
        return None
