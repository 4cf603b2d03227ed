"""FULL_TRANSITIVE compatibility: the current schemas against every released version."""

from __future__ import annotations

import copy
import hashlib
import io
import json
from collections.abc import Callable
from importlib import resources
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer

from schemas.compatibility import check_models, full_transitive_incompatibilities
from schemas.examples import example_events
from schemas.models import EVENT_MODELS, Event, JobStateChanged
from schemas.store import (
    Schema,
    canonical_form,
    load_current_schema,
    load_released_schemas,
    schema_stem,
)

JOB = "inboxflow.events.JobStateChanged"


def _without_docs(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_docs(v) for k, v in node.items() if k != "doc"}
    if isinstance(node, list):
        return [_without_docs(v) for v in node]
    return node


def test_every_current_schema_is_full_transitive_compatible() -> None:
    problems = check_models()

    assert problems == [], "\n".join(map(str, problems))


@pytest.mark.parametrize("model", EVENT_MODELS, ids=lambda m: m.__name__)
def test_current_schema_is_the_latest_released_version(model: type[Event]) -> None:
    # Every layout a producer writes must be released, or consumers built from an older commit
    # could not be told about it. Doc-only edits need no new version.
    released = load_released_schemas(model)
    assert released, f"release it: copy the .avsc to schemas/released/{schema_stem(model)}/v1.avsc"
    latest = max(released)

    assert _without_docs(released[latest]) == _without_docs(load_current_schema(model)), (
        f"{model.__name__} changed: check compatibility, then copy schemas/avro/{model.avro_file} "
        f"to schemas/released/{schema_stem(model)}/v{latest + 1}.avsc"
    )


@pytest.mark.parametrize("model", EVENT_MODELS, ids=lambda m: m.__name__)
def test_released_versions_read_current_data_and_back_with_fastavro(model: type[Event]) -> None:
    # The same promise checked with the implementation that writes our bytes.
    record = example_events()[model].model_dump()
    current = parse_schema(load_current_schema(model), named_schemas={})
    for schema in load_released_schemas(model).values():
        old = parse_schema(schema, named_schemas={})
        for writer, reader in ((current, old), (old, current)):
            buffer = io.BytesIO()
            schemaless_writer(buffer, writer, record)
            buffer.seek(0)
            assert schemaless_reader(buffer, writer, reader)["user_id"] == record["user_id"]


# --- the checker catches what it must ------------------------------------------------------------


def _job_schema() -> Schema:
    return load_current_schema(JobStateChanged)


def _field(schema: Schema, name: str) -> dict[str, Any]:
    return next(f for f in schema["fields"] if f["name"] == name)


def _add_required_field(schema: Schema) -> None:
    schema["fields"].append({"name": "priority", "type": "int", "doc": "x"})


def _remove_required_field(schema: Schema) -> None:
    schema["fields"] = [f for f in schema["fields"] if f["name"] != "attempts"]


def _widen_int_to_long(schema: Schema) -> None:
    _field(schema, "attempts")["type"] = "long"


def _rename_field(schema: Schema) -> None:
    _field(schema, "subject_id")["name"] = "subject"


def _make_nullable_field_required(schema: Schema) -> None:
    field = _field(schema, "batch_id")
    field["type"] = "string"
    del field["default"]


def _rename_record(schema: Schema) -> None:
    schema["name"] = "JobChanged"


@pytest.mark.parametrize(
    ("mutate", "direction"),
    [
        (_add_required_field, "backward"),
        (_remove_required_field, "forward"),
        (_widen_int_to_long, "forward"),
        (_rename_field, "backward"),
        (_make_nullable_field_required, "backward"),
        (_rename_record, "backward"),
    ],
    ids=lambda v: getattr(v, "__name__", v),
)
def test_incompatible_change_is_caught(mutate: Callable[[Schema], None], direction: str) -> None:
    released = {1: _job_schema()}
    changed = copy.deepcopy(released[1])
    mutate(changed)

    problems = full_transitive_incompatibilities(JOB, changed, released)

    assert direction in {p.direction for p in problems}, problems


def test_incompatibility_with_an_old_version_is_caught_even_if_the_last_is_fine() -> None:
    v1 = _job_schema()
    v2 = copy.deepcopy(v1)
    _remove_required_field(v2)  # v2 released by mistake; v3 = v2 must still fail against v1

    problems = full_transitive_incompatibilities(JOB, copy.deepcopy(v2), {1: v1, 2: v2})

    assert {p.released_version for p in problems} == {1}
    assert "v1" in str(problems[0])


def test_adding_a_defaulted_field_is_compatible() -> None:
    released = {1: _job_schema()}
    changed = copy.deepcopy(released[1])
    changed["fields"].append(
        {"name": "trace_id", "type": ["null", "string"], "default": None, "doc": "x"}
    )

    assert full_transitive_incompatibilities(JOB, changed, released) == []


def test_new_enum_symbol_is_compatible_because_the_enum_has_a_default() -> None:
    released = {1: _job_schema()}
    changed = copy.deepcopy(released[1])
    _field(changed, "status")["type"]["symbols"].insert(-1, "paused")

    assert full_transitive_incompatibilities(JOB, changed, released) == []


def test_new_enum_symbol_without_a_default_breaks_old_readers() -> None:
    released = {1: _job_schema()}
    del _field(released[1], "status")["type"]["default"]
    changed = copy.deepcopy(released[1])
    _field(changed, "status")["type"]["symbols"].append("paused")

    problems = full_transitive_incompatibilities(JOB, changed, released)

    assert [p.direction for p in problems] == ["forward"]


def test_old_reader_maps_a_new_enum_symbol_to_unknown() -> None:
    old = _job_schema()
    new = copy.deepcopy(old)
    _field(new, "status")["type"]["symbols"].insert(-1, "paused")
    record = {**example_events()[JobStateChanged].model_dump(), "status": "paused"}
    buffer = io.BytesIO()
    schemaless_writer(buffer, parse_schema(new, named_schemas={}), record)
    buffer.seek(0)

    decoded = schemaless_reader(
        buffer, parse_schema(new, named_schemas={}), parse_schema(old, named_schemas={})
    )

    assert JobStateChanged.model_validate(decoded).status == "unknown"


def test_doc_only_change_keeps_the_fingerprint() -> None:
    schema = _job_schema()
    edited = copy.deepcopy(schema)
    edited["doc"] = "reworded"

    assert canonical_form(edited) == canonical_form(schema)


# --- released versions never change --------------------------------------------------------------


def _layout_digest(schema: Schema) -> str:
    text = json.dumps(_without_docs(schema), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def test_released_versions_are_pinned_and_unchanged() -> None:
    # Old records on the topics were written with these exact layouts and defaults: a released
    # file may get doc fixes, nothing else. A new version needs its digest added to pins.json.
    released = resources.files("schemas") / "released"
    pins = json.loads((released / "pins.json").read_text(encoding="utf-8"))
    found = {
        f"{schema_stem(model)}/v{version}.avsc": _layout_digest(schema)
        for model in EVENT_MODELS
        for version, schema in load_released_schemas(model).items()
    }

    assert found == pins, (
        "a released schema changed or a new one is unpinned: released versions are immutable; "
        "pin new ones in schemas/released/pins.json"
    )
