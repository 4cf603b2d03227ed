"""The pydantic models and the .avsc files describe the same records, checked in both directions.

Both sides are reduced to one shape (types, nullability, defaults, enum symbols, nested records;
docs left out) and compared whole, so a field added, removed, renamed, retyped or given another
default on either side fails here.
"""

from __future__ import annotations

import types
import typing
from datetime import datetime
from enum import StrEnum
from typing import Any, Union

import pytest
from pydantic_core import PydanticUndefined

from schemas.models import EVENT_MODELS, AvroPrimitive, AvroRecord, Event
from schemas.store import Schema, load_current_schema

_PRIMITIVES = {str: "string", bool: "boolean", bytes: "bytes", float: "double"}
_AVRO_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
_TIMESTAMP = {"type": "long", "logicalType": "timestamp-millis"}


# --- the model side -----------------------------------------------------------------------------


def _model_type(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *metadata = typing.get_args(annotation)
        marks = [m.name for m in metadata if isinstance(m, AvroPrimitive)]
        return marks[0] if marks else _model_type(base)
    if origin in (Union, types.UnionType):
        branches = [a for a in typing.get_args(annotation) if a is not type(None)]
        assert len(branches) == 1, f"only T | None unions map to Avro here: {annotation}"
        return ["null", _model_type(branches[0])]
    if origin is list:
        return {"type": "array", "items": _model_type(typing.get_args(annotation)[0])}
    if annotation is datetime:
        return _TIMESTAMP
    if annotation in _PRIMITIVES:
        return _PRIMITIVES[annotation]
    if isinstance(annotation, type) and issubclass(annotation, StrEnum):
        return _enum_shape(annotation)
    if isinstance(annotation, type) and issubclass(annotation, AvroRecord):
        return _model_shape(annotation)
    raise AssertionError(f"no Avro mapping for {annotation!r}")


def _enum_shape(enum: type[StrEnum]) -> dict[str, Any]:
    symbols = [member.value for member in enum]
    shape: dict[str, Any] = {"type": "enum", "name": enum.__name__, "symbols": symbols}
    if "unknown" in symbols:
        shape["default"] = "unknown"
    return shape


def _model_shape(model: type[AvroRecord]) -> dict[str, Any]:
    hints = typing.get_type_hints(model, include_extras=True)
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        field: dict[str, Any] = {"type": _model_type(hints[name])}
        if info.default_factory is not None:
            field["default"] = info.default_factory()  # type: ignore[call-arg]
        elif info.default is not PydanticUndefined:
            field["default"] = info.default
        fields[name] = field
    return {"type": "record", "name": model.__name__, "fields": fields}


# --- the .avsc side -----------------------------------------------------------------------------


def _avsc_type(node: Any, named: dict[str, Any]) -> Any:
    if isinstance(node, str):
        return node if node in _AVRO_PRIMITIVES else named[node]
    if isinstance(node, list):
        return [_avsc_type(branch, named) for branch in node]
    kind = node["type"]
    if kind == "array":
        return {"type": "array", "items": _avsc_type(node["items"], named)}
    if kind == "enum":
        shape = {k: node[k] for k in ("type", "name", "symbols", "default") if k in node}
        named[node["name"]] = shape
        return shape
    if kind == "record":
        return _avsc_record(node, named)
    if "logicalType" in node:
        return {"type": kind, "logicalType": node["logicalType"]}
    return kind


def _avsc_record(node: Schema, named: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    shape = {"type": "record", "name": node["name"], "fields": fields}
    named[node["name"]] = shape
    for field in node["fields"]:
        entry: dict[str, Any] = {"type": _avsc_type(field["type"], named)}
        if "default" in field:
            entry["default"] = field["default"]
        fields[field["name"]] = entry
    return shape


def _docs_missing(node: Any, path: str) -> list[str]:
    if isinstance(node, list):
        return [m for i, branch in enumerate(node) for m in _docs_missing(branch, f"{path}|{i}")]
    if not isinstance(node, dict):
        return []
    missing = [] if node.get("doc") or node["type"] not in ("record", "enum") else [path]
    if node["type"] == "array":
        missing += _docs_missing(node["items"], f"{path}[]")
    for field in node.get("fields", []):
        where = f"{path}.{field['name']}"
        missing += [] if field.get("doc") else [where]
        missing += _docs_missing(field["type"], where)
    return missing


# --- the checks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model", EVENT_MODELS, ids=lambda m: m.__name__)
def test_model_and_avsc_have_the_same_shape(model: type[Event]) -> None:
    avsc = load_current_schema(model)

    assert _model_shape(model) == _avsc_record(avsc, {})


@pytest.mark.parametrize("model", EVENT_MODELS, ids=lambda m: m.__name__)
def test_every_record_enum_and_field_has_a_doc(model: type[Event]) -> None:
    assert _docs_missing(load_current_schema(model), model.__name__) == []


@pytest.mark.parametrize("model", EVENT_MODELS, ids=lambda m: m.__name__)
def test_avsc_is_in_the_events_namespace_and_keyed_by_user(model: type[Event]) -> None:
    avsc = load_current_schema(model)

    assert avsc["namespace"] == "inboxflow.events"
    assert avsc["name"] == model.__name__
    assert any(field["name"] == "user_id" and field["type"] == "string" for field in avsc["fields"])


def test_shape_comparison_notices_a_missing_field() -> None:
    # Guard the guard: dropping one field from the .avsc side must make the shapes differ.
    from schemas.models import SyncRequested

    avsc = load_current_schema(SyncRequested)
    avsc["fields"] = [f for f in avsc["fields"] if f["name"] != "reason"]

    assert _model_shape(SyncRequested) != _avsc_record(avsc, {})


def test_shape_comparison_notices_a_changed_default() -> None:
    from schemas.models import SyncRequested

    avsc = load_current_schema(SyncRequested)
    next(f for f in avsc["fields"] if f["name"] == "reason")["default"] = "other"

    assert _model_shape(SyncRequested) != _avsc_record(avsc, {})
