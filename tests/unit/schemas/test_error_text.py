"""safe_error_text(): what of an exception may leave the process, with canaries as the input."""

from __future__ import annotations

import email.errors
import json
import subprocess
import sys
import textwrap

import aiohttp
import psycopg
import pytest
from aiokafka.errors import KafkaConnectionError
from fastavro.validation import ValidationError as AvroValidationError
from fastavro.validation import validate
from pydantic import BaseModel

from schemas.errors import (
    PermanentError,
    TransientError,
    classify,
    redact_secrets,
    safe_error_message,
    safe_error_text,
)
from schemas.models import EmailNormalized
from schemas.serde import SOE_MAGIC, serde_for
from schemas.store import default_store

CANARY = "CANARY-7f3e9a"  # stands for a subject, a body, a correspondent's address, a secret


class Mail(BaseModel):
    subject: int
    headers: dict[str, int]


def raised(fn: object) -> BaseException:
    try:
        fn()  # type: ignore[operator]
    except BaseException as exc:  # noqa: BLE001 - the test inspects whatever it raised
        return exc
    raise AssertionError("did not raise")


def test_a_pydantic_error_names_fields_and_error_types_never_the_input() -> None:
    exc = raised(lambda: Mail(subject=CANARY, headers={f"{CANARY}@example.org": CANARY}))

    text = safe_error_text(exc)

    assert CANARY not in text
    assert text.startswith("ValidationError: 2 error(s) for Mail: subject (int_parsing); ")
    assert "headers.* (int_parsing)" in text, "a dict key from the input is not repeated"
    assert "test_error_text.py" in text, "where it was raised"


def test_a_psycopg_error_is_its_class_and_sqlstate() -> None:
    exc = psycopg.errors.InvalidTextRepresentation(
        f'invalid input syntax for type integer: "{CANARY}"'
    )

    assert safe_error_text(exc) == "InvalidTextRepresentation: sqlstate 22P02"
    assert safe_error_text(psycopg.OperationalError(f"password={CANARY}")) == "OperationalError"


def test_a_fastavro_validation_error_names_its_fields_only() -> None:
    schema = {"type": "record", "name": "R", "fields": [{"name": "subject", "type": "int"}]}
    exc = raised(lambda: validate({"subject": CANARY}, schema, raise_errors=True))
    assert isinstance(exc, AvroValidationError)
    assert CANARY in str(exc), "fastavro quotes the datum"

    assert CANARY not in safe_error_text(exc)
    assert "fields R.subject" in safe_error_text(exc)


def test_undecodable_avro_bytes_never_reach_the_error() -> None:
    store = default_store()
    header = SOE_MAGIC + store.current(EmailNormalized).fingerprint
    exc = raised(lambda: serde_for(None).decode(header + CANARY.encode() * 3, EmailNormalized))

    assert type(exc).__name__ == "UndecodableRecordError"
    assert CANARY not in str(exc)
    assert CANARY not in classify(exc).message


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: (CANARY.encode() + b"\xff").decode("utf-8"), "'utf-8' codec can't decode"),
        (lambda: (CANARY + "\xe9").encode("ascii"), "'ascii' codec can't encode"),
        (lambda: {}[CANARY], "KeyError at schemas/test_error_text.py"),
        (lambda: json.loads('{"subject": ' + CANARY + "}"), "JSONDecodeError: Expecting value"),
        (lambda: int(CANARY), "ValueError at schemas/test_error_text.py"),
    ],
)
def test_parser_errors_keep_their_structure_not_their_input(make: object, expected: str) -> None:
    exc = raised(make)

    text = safe_error_text(exc)

    assert CANARY not in text
    assert expected in text


def test_errors_that_are_not_ours_say_only_their_type() -> None:
    assert safe_error_text(email.errors.HeaderParseError(CANARY)) == "HeaderParseError"
    assert safe_error_text(RuntimeError(CANARY)) == "RuntimeError"
    assert safe_error_message(ValueError(CANARY)) == ""


def test_file_names_are_dropped_from_os_errors() -> None:
    exc = FileNotFoundError(2, "No such file or directory", f"/mail/{CANARY}.eml")

    assert safe_error_text(exc) == "FileNotFoundError: [Errno 2] No such file or directory"


def test_our_errors_and_connection_errors_keep_their_messages() -> None:
    assert safe_error_text(TransientError("gmail 503: backend error")) == (
        "TransientError: gmail 503: backend error"
    )
    assert safe_error_text(PermanentError()) == (
        "PermanentError: Retrying cannot help; the record goes to the dead-letter topic."
    )
    assert "Unable to bootstrap" in safe_error_text(KafkaConnectionError("Unable to bootstrap"))
    assert safe_error_text(TimeoutError("read timed out")) == "TimeoutError: read timed out"
    assert "Cannot connect" in safe_error_text(aiohttp.ClientConnectionError("Cannot connect"))


def test_kept_messages_lose_their_secrets() -> None:
    exc = TransientError(
        f"postgresql://inboxflow:{CANARY}@db:5432/inboxflow down; "
        f"Authorization: Bearer ya29.{CANARY}; password={CANARY} token={CANARY}"
    )

    text = safe_error_text(exc)

    assert CANARY not in text
    assert "postgresql://inboxflow:***@db:5432/inboxflow down" in text


@pytest.mark.parametrize(
    "secret",
    [
        f"https://user:{CANARY}@registry.example.org/apis",
        f"host=db password={CANARY} dbname=x",
        f"password='{CANARY} with spaces'",
        f"Bearer {CANARY}abcdef",
        f"eyJhbGciOiJSUzI1NiJ9.eyJ{CANARY}.sig",
        f"1//{CANARY}refresh",
        f"AIzaSy{CANARY}{CANARY}",
        f"sk-{CANARY}{CANARY}",
        f"https://api.example.org/v1?api_key={CANARY}&x=1",
    ],
)
def test_redact_secrets_knows_the_usual_shapes(secret: str) -> None:
    assert CANARY not in redact_secrets(f"failed: {secret} (retrying)")


def test_classify_puts_no_input_in_the_failure_message() -> None:
    failure = classify(ValueError(f"bad header in {CANARY}"))

    assert failure.message == "ValueError"
    assert classify(TransientError("blip")).message == "TransientError: blip"


def test_exception_groups_list_their_members_safely() -> None:
    group = ExceptionGroup("unhandled errors in a TaskGroup", [ValueError(CANARY), TimeoutError()])

    text = safe_error_text(group)

    assert CANARY not in text
    assert text == "ExceptionGroup: 2 sub-exception(s): ValueError; TimeoutError"


def test_redaction_works_while_the_interpreter_shuts_down() -> None:
    """A library's last log line (from a ``__del__``) is redacted, not a "Logging error"."""
    code = textwrap.dedent(
        """
        from schemas.errors import redact_secrets

        class Late:
            def __del__(self):
                print(redact_secrets("postgresql://u:pw@h/db token=abc Bearer abcdefghijk"))

        keep = Late()
        """
    )
    result = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.stderr == ""
    assert result.stdout.strip() == "postgresql://u:***@h/db token=*** Bearer ***"
