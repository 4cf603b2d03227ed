"""normalize_message gives the recorded output on the corpus, the .eml samples and their mutants.

``tests/data/normalize_expected.json`` holds, per case, a digest of the normalized fields as the
implementation before the fast path (stdlib header objects on every access) produced them. The
fast path must reproduce that output byte for byte: the generated corpus covers the MIME shapes
of real mail, the mutants (lines dropped, bytes flipped, boundaries broken, headers refolded,
parameters quoted, commented or RFC 2231-encoded) push it onto its fallbacks.

Regenerate the file only for an intended change of output:
``python -m tests.unit.streams.test_normalize_expectations > tests/data/normalize_expected.json``.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devstack.gmail_emulator.generator import generate_messages
from schemas.errors import MimeBombError
from streams.stages.mime import normalize_message

DATA = Path(__file__).resolve().parents[2] / "data"
EXPECTED = DATA / "normalize_expected.json"
CORPUS_SEEDS = (3, 7)
CORPUS_MESSAGES = 250
MUTANTS_PER_MESSAGE = 3

# Header lines the mutants splice in: each takes the parser off the common shape somewhere.
_ODD_HEADERS = (
    b'Content-Type: text/plain; charset="utf-8" (comment)',
    b"Content-Type: text/plain; charset*=utf-8''%C3%A9",
    b'Content-Type: TEXT/HTML; CHARSET = "ISO-8859-1"',
    b'Content-Type: text/plain; charset="a\\"b"',
    b"Content-Type: text/plain;\r\n charset=windows-1252",
    b"Content-Type: multipart/mixed",
    b'Content-Type: application/octet-stream; name="=?utf-8?q?r=C3=A9sum=C3=A9.pdf?="',
    b"Content-Disposition: attachment; filename*=UTF-8''na%C3%AFve%20plan.txt",
    b'Content-Disposition: inline; filename="=?iso-8859-1?q?caf=E9?=.txt"',
    b'Content-Disposition: attachment; filename*0="long"; filename*1="name.bin"',
    b"Content-Transfer-Encoding: BASE64",
    b"Content-Transfer-Encoding: quoted-printable (comment)",
    b"Subject: =?utf-8?b?w6nDqQ==?= =?utf-8?q?_and_more?= plain",
    b"Subject: =?bogus?q?x?= =?utf-8?b?###?=",
    b"Subject: caf\xc3\xa9 \xe9t\xe9",
    b"Message-ID: <a@b> <c@d>",
    b"In-Reply-To: (comment) <x@y>",
    b"Subject: " + b"word " * 900,
    b"From: =?utf-8?q?Ana_M=C3=BCller?= <ana@example.com>, bob@example.org (Bob)",
    b'To: team: a@x.test, "b, c" <b@x.test>;',
    b"Date: Mon, 32 Foo 2026 25:61:00 +9999",
    b"Content-Type: text/plain; charset=\xe9",
)


def corpus() -> Iterator[tuple[str, bytes]]:
    """Yield (case name, raw message) for every recorded case, in a stable order."""
    originals: list[tuple[str, bytes]] = []
    for seed in CORPUS_SEEDS:
        for index, message in enumerate(generate_messages(seed, CORPUS_MESSAGES, "me@x.test")):
            originals.append((f"seed{seed}-{index:03d}", message.raw))
    for path in sorted((DATA / "eml").glob("*.eml")):
        originals.append((f"eml-{path.stem}", path.read_bytes()))
    yield from originals
    rng = random.Random(20261201)
    for name, raw in originals:
        for number in range(MUTANTS_PER_MESSAGE):
            yield f"{name}-mutant{number}", _mutate(raw, rng)


def _mutate(raw: bytes, rng: random.Random) -> bytes:
    lines = raw.split(b"\r\n")
    for _ in range(rng.randint(1, 3)):
        rng.choice(_MUTATIONS)(lines, rng)
        if not lines:
            lines.append(b"")
    return b"\r\n".join(lines)


def _drop_line(lines: list[bytes], rng: random.Random) -> None:
    del lines[rng.randrange(len(lines))]


def _repeat_line(lines: list[bytes], rng: random.Random) -> None:
    index = rng.randrange(len(lines))
    lines.insert(index, lines[index])


def _flip_byte(lines: list[bytes], rng: random.Random) -> None:
    index = rng.randrange(len(lines))
    line = bytearray(lines[index] or b" ")
    line[rng.randrange(len(line))] = rng.choice((0x00, 0x0D, 0x22, 0x3B, 0x3D, 0xE9, 0xFF))
    lines[index] = bytes(line)


def _odd_header(lines: list[bytes], rng: random.Random) -> None:
    # Before the first blank line after a random header: the top header block or a part's.
    starts = [i + 1 for i, line in enumerate(lines) if line.startswith(b"--")] or [0]
    lines.insert(rng.choice(starts), rng.choice(_ODD_HEADERS))


def _refold(lines: list[bytes], rng: random.Random) -> None:
    index = rng.randrange(len(lines))
    line = lines[index]
    spaces = [i for i, byte in enumerate(line) if byte == 0x20]
    if spaces:
        cut = rng.choice(spaces)
        lines[index : index + 1] = [line[:cut], b"\t" + line[cut + 1 :]]


def _break_boundary(lines: list[bytes], rng: random.Random) -> None:
    marked = [i for i, line in enumerate(lines) if line.startswith(b"--")]
    if marked:
        index = rng.choice(marked)
        lines[index] = lines[index][: rng.randrange(2, max(3, len(lines[index])))] + b"x"


def _truncate(lines: list[bytes], rng: random.Random) -> None:
    del lines[rng.randrange(len(lines)) :]


def _swap_case(lines: list[bytes], rng: random.Random) -> None:
    index = rng.randrange(len(lines))
    lines[index] = lines[index].swapcase()


_MUTATIONS: tuple[Callable[[list[bytes], random.Random], None], ...] = (
    _drop_line,
    _repeat_line,
    _flip_byte,
    _odd_header,
    _odd_header,
    _refold,
    _break_boundary,
    _truncate,
    _swap_case,
)


def digest(raw: bytes) -> str:
    """Return a digest of every field ``normalize_message`` gives for ``raw``."""
    try:
        normalized = normalize_message(
            raw, message_id="m", thread_id="t", label_ids=["INBOX"], size_estimate=None
        )
    except MimeBombError:
        return "MimeBombError"
    fields = json.dumps(
        normalized.as_event_fields(), sort_keys=True, default=str, ensure_ascii=False
    )
    return hashlib.sha256(fields.encode("utf-8")).hexdigest()[:24]


def test_every_recorded_case_normalizes_as_recorded() -> None:
    expected: dict[str, str] = json.loads(EXPECTED.read_text())
    cases = dict(corpus())
    assert cases.keys() == expected.keys()
    differing = [name for name, raw in cases.items() if digest(raw) != expected[name]]
    assert differing == []


@pytest.mark.parametrize("name", ["eml-01-latin1-quoted-printable", "seed7-000"])
def test_the_digest_sees_a_change_of_one_field(name: str) -> None:
    raw = dict(corpus())[name]
    changed = raw.replace(b"Subject: ", b"Subject: X", 1)
    assert digest(changed) != digest(raw)


if __name__ == "__main__":
    recorded = {name: digest(raw) for name, raw in corpus()}
    sys.stdout.write(json.dumps(recorded, indent=0, sort_keys=True) + "\n")
