"""Deterministic mailbox generator: the same seed gives the same bytes, ids and labels.

Covers the MIME shapes a normalizer meets in real mail: plain text, multipart/alternative, nested
multipart/mixed with attachments, non-UTF-8 charsets, RFC 2047 headers, HTML-only, empty bodies,
long threads and many recipients. Pure: no clock, no I/O.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.charset import QP, Charset
from email.header import Header
from email.mime.application import MIMEApplication
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime, formataddr

BASE_TIME = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
_FIRST = ["Ana", "Bo", "Chen", "Dmitri", "Eva", "Farid", "Grace", "Hiro", "Ines", "José", "Zoë"]
_LAST = ["Müller", "Okafor", "Nguyen", "Smith", "Sørensen", "Tanaka", "Ivanova", "García"]
_DOMAINS = ["example.com", "example.org", "corp.example", "mail.example.net"]
_TOPICS = [
    "Quarterly budget", "Réunion de lundi", "Deploy window", "Invoice 4471", "Lunch?",
    "Contract draft v3", "Straße closure notice", "Offsite agenda", "Bug triage", "Newsletter",
]  # fmt: skip
_WORDS = [
    "please",
    "review",
    "the",
    "attached",
    "numbers",
    "before",
    "friday",
    "we",
    "can",
    "discuss",
    "in",
    "the",
    "meeting",
    "thanks",
    "regards",
    "let",
    "me",
    "know",
    "if",
    "anything",
    "is",
    "unclear",
    "the",
    "team",
    "agreed",
    "to",
    "move",
    "the",
    "deadline",
]
_CHARSETS = ["iso-8859-1", "windows-1252", "koi8-r", "iso-2022-jp", "iso-8859-15"]
_CHARSET_TEXT = {
    "iso-8859-1": "Café crème à l'hôtel, façade über alles.",
    "windows-1252": "Prices in \u20ac \u2013 \u201cquoted\u201d text\u2026 na\u00efve.",
    "koi8-r": "Привет, это письмо в кодировке KOI8-R.",
    "iso-2022-jp": "こんにちは、会議の資料を送ります。",
    "iso-8859-15": "Œuvre coûte 5 € à Saint-Étienne.",
}


@dataclass(frozen=True)
class GeneratedMessage:
    """One generated message with the labels and receive time to store it with."""

    raw: bytes
    label_ids: tuple[str, ...]
    internal_date: int  # epoch ms


class _Gen:
    def __init__(self, seed: int, owner: str) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - reproducible mail
        self.seed = seed
        self.owner = owner
        self.n = 0

    def person(self) -> tuple[str, str]:
        first, last = self.rng.choice(_FIRST), self.rng.choice(_LAST)
        ascii_first = first.encode("ascii", "ignore").decode().lower() or "x"
        address = f"{ascii_first}.{last.encode('ascii', 'ignore').decode().lower()}"
        return f"{first} {last}", f"{address}@{self.rng.choice(_DOMAINS)}"

    def sentence(self, words: int) -> str:
        return " ".join(self.rng.choice(_WORDS) for _ in range(words)).capitalize() + "."

    def boundary(self) -> str:
        self.n += 1
        return f"==inboxflow-{self.seed}-{self.n}-{self.rng.randrange(10**9):09d}=="

    def body(self, kind: str) -> MIMEBase:
        text = "\n\n".join(self.sentence(self.rng.randint(6, 30)) for _ in range(3))
        html_text = "<html><body>" + "".join(f"<p>{p}</p>" for p in text.split("\n\n"))
        html_text += "</body></html>"
        if kind == "plain":
            return MIMEText(text, "plain", "utf-8")
        if kind == "html":
            return MIMEText(html_text, "html", "utf-8")
        if kind == "empty":
            return MIMEText("", "plain", "us-ascii")
        if kind == "charset":
            name = self.rng.choice(_CHARSETS)
            part = MIMEText(_CHARSET_TEXT[name] + "\n" + text, "plain", name)
            if name.startswith("iso-8859"):
                charset = Charset(name)
                charset.body_encoding = QP
                part = MIMEText(_CHARSET_TEXT[name] + "\n" + text, "plain", charset)  # type: ignore[arg-type]
            return part
        alt = MIMEMultipart("alternative", boundary=self.boundary())
        alt.attach(MIMEText(text, "plain", "utf-8"))
        alt.attach(MIMEText(html_text, "html", "utf-8"))
        if kind == "alternative":
            return alt
        mixed = MIMEMultipart("mixed", boundary=self.boundary())
        mixed.attach(alt)
        for index in range(self.rng.randint(1, 3)):
            size = self.rng.choice([300, 2600, 12_000])
            blob = bytes(self.rng.randrange(256) for _ in range(size))
            subtype, ext = self.rng.choice([("pdf", "pdf"), ("octet-stream", "bin")])
            attachment = MIMEApplication(blob, subtype)
            name = f"report-{index}.{ext}" if index else f"Überblick {self.n}.{ext}"
            attachment.add_header("Content-Disposition", "attachment", filename=("utf-8", "", name))
            mixed.attach(attachment)
        return mixed

    def message(
        self, index: int, when: datetime, subject: str, parent: tuple[str, str] | None
    ) -> tuple[MIMEBase, str]:
        kind = self.rng.choices(
            ["plain", "alternative", "mixed", "charset", "html", "empty"],
            weights=[30, 30, 12, 12, 10, 6],
        )[0]
        msg = self.body(kind)
        from_name, from_addr = self.person()
        if self.rng.random() < 0.15:
            from_name, from_addr = "Me Myself", self.owner
        msg["From"] = formataddr((from_name, from_addr), charset="utf-8")
        count = self.rng.choice([1, 1, 1, 2, 3, 40]) if index % 17 else 60
        recipients = [self.owner] + [self.person()[1] for _ in range(count - 1)]
        msg["To"] = ", ".join(recipients[: max(1, count // 2)])
        if count > 2:
            msg["Cc"] = ", ".join(formataddr(self.person()) for _ in range(count // 2))
        msg["Subject"] = Header(("Re: " if parent else "") + subject, "utf-8").encode()
        msg["Date"] = format_datetime(when)
        message_id = f"<{self.seed}.{index}.{self.rng.randrange(10**6)}@{_DOMAINS[0]}>"
        msg["Message-ID"] = message_id
        if parent:
            msg["In-Reply-To"] = parent[0]
            msg["References"] = f"{parent[1]} {parent[0]}".strip()
        if kind == "empty":
            del msg["Subject"]
            msg["Subject"] = ""
        return msg, message_id


def _labels(rng: random.Random, from_owner: bool) -> tuple[str, ...]:
    if from_owner:
        return ("SENT",)
    roll = rng.random()
    if roll < 0.03:
        return ("SPAM",)
    if roll < 0.06:
        return ("TRASH",)
    labels = ["INBOX"]
    if rng.random() < 0.4:
        labels.append("UNREAD")
    if rng.random() < 0.2:
        labels.append(rng.choice(["CATEGORY_PROMOTIONS", "CATEGORY_UPDATES", "IMPORTANT"]))
    if rng.random() < 0.1:
        labels.append("Label_1")
    return tuple(labels)


def _thread_sizes(rng: random.Random, count: int) -> Iterator[int]:
    left = count
    while left > 0:
        size = rng.choices([1, 2, 3, 5, 12, 30], weights=[50, 18, 12, 10, 6, 4])[0]
        size = min(size, left)
        left -= size
        yield size


def generate_messages(seed: int, count: int, owner: str) -> list[GeneratedMessage]:
    """Generate ``count`` messages for ``owner``, oldest first, deterministic in ``seed``."""
    gen = _Gen(seed, owner)
    threads: list[list[int]] = []
    position = 0
    for size in _thread_sizes(gen.rng, count):
        threads.append(list(range(position, position + size)))
        position += size
    # Interleave threads in time: each message gets a slot, threads spread over the timeline.
    order = list(range(count))
    gen.rng.shuffle(order)
    slot_of = {msg_index: slot for slot, msg_index in enumerate(sorted(order))}
    out: list[tuple[int, GeneratedMessage]] = []
    for thread in threads:
        subject = f"{gen.rng.choice(_TOPICS)} #{thread[0]}"
        parent: tuple[str, str] | None = None
        start = gen.rng.randrange(max(1, count))
        for step, msg_index in enumerate(thread):
            slot = start + step * gen.rng.randint(1, 4) + slot_of[msg_index] % 3
            when = BASE_TIME + timedelta(minutes=37 * slot, seconds=gen.rng.randrange(60))
            msg, message_id = gen.message(msg_index, when, subject, parent)
            refs = f"{parent[1]} {parent[0]}".strip() if parent else ""
            parent = (message_id, refs)
            from_owner = owner in str(msg["From"])
            raw = msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            stamp = int(when.timestamp() * 1000)
            out.append((stamp, GeneratedMessage(raw, _labels(gen.rng, from_owner), stamp)))
    out.sort(key=lambda item: item[0])
    return [message for _, message in out]
