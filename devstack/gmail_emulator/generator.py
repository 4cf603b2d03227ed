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


# --- threads with quoted replies, signatures and forwards (embedding benchmarks) ----------------
# Separate from generate_messages, with its own random stream, so that function's output stays
# byte-identical. Every message states one fact of its own, so each query has known answers.

_PROJECTS = [
    "Atlas", "Borealis", "Cobalt", "Dune", "Ember", "Fjord", "Granite", "Harbor", "Iris",
    "Juniper", "Kestrel", "Lumen", "Meridian", "Nimbus", "Onyx", "Pioneer", "Quartz", "Redwood",
    "Sierra", "Tundra", "Umbra", "Vertex", "Willow", "Xenon", "Yarrow", "Zephyr", "Aurora",
    "Basalt", "Cedar", "Falcon", "Glacier", "Horizon", "Indigo", "Jasper", "Lotus", "Mistral",
]  # fmt: skip
_CITIES = ["Lisbon", "Osaka", "Nairobi", "Oslo", "Lima", "Austin", "Gdansk", "Porto", "Seoul"]
_VENDORS = ["Northwind", "Contoso", "Fabrikam", "Tailspin", "Litware", "Adatum", "Proseware"]
_BUGS = [
    ("memory leak", "image resizer"), ("race condition", "payment queue"),
    ("timezone bug", "calendar export"), ("broken migration", "billing database"),
    ("certificate expiry", "login service"), ("deadlock", "inventory sync"),
]  # fmt: skip
_WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
_TITLES = ["Project Manager", "Staff Engineer", "Finance Lead", "Head of Operations"]
_COMPANIES = ["ACME Corp", "Globex", "Initech", "Umbrella Health"]
_FILLER = [
    "Let me know if anything is unclear.",
    "I will send the updated slides tomorrow morning.",
    "The notes from the last call are in the shared folder.",
    "Happy to jump on a call if that is easier.",
    "Please keep the rest of the team in the loop.",
    "We can revisit the details at the weekly sync.",
    "I have copied the relevant people on this thread.",
    "Nothing else has changed since my last update.",
]
# Each fact: (statement, question) templates over one project and drawn details.
_FACT_KINDS = [
    "budget", "deadline", "lead", "vendor", "bug", "room", "customer", "headcount", "tool",
    "risk", "meeting",
]  # fmt: skip
_TOOLS = ["Linear", "Jira", "YouTrack", "GitLab issues", "Asana"]
_RISKS = [
    "a shortage of GPUs", "the new data protection rules", "a strike at the port",
    "the currency exchange rate", "losing the only database expert",
]  # fmt: skip


@dataclass(frozen=True)
class ThreadMessage:
    """One generated thread message: its Gmail ids, raw bytes, labels and receive time."""

    message_id: str
    thread_id: str
    raw: bytes
    label_ids: tuple[str, ...]
    internal_date: int  # epoch ms


@dataclass(frozen=True)
class ThreadQuery:
    """A question and the ids of the messages whose author wrote its answer."""

    text: str
    answer_ids: tuple[str, ...]


@dataclass(frozen=True)
class GeneratedThreads:
    """Thread messages, oldest first, and questions about what they say."""

    messages: list[ThreadMessage]
    queries: list[ThreadQuery]


@dataclass
class _Draft:
    message_id: str
    thread_id: str
    when: datetime
    sender: tuple[str, str]
    recipient: tuple[str, str]
    subject: str
    body: str
    rfc_id: str
    parent: str | None


class _ThreadGen:
    def __init__(self, seed: int, owner: str) -> None:
        self.rng = random.Random(seed * 7919 + 17)  # noqa: S311 - reproducible mail
        self.seed = seed
        self.owner = ("Me Myself", owner)
        self.drafts: list[_Draft] = []
        self.facts: list[tuple[str, list[str]]] = []  # (question, answer message ids)

    def person(self) -> tuple[str, str]:
        first, last = self.rng.choice(_FIRST), self.rng.choice(_LAST)
        local = f"{first}.{last}".encode("ascii", "ignore").decode().lower()
        return f"{first} {last}", f"{local}@{self.rng.choice(_DOMAINS)}"

    def fact(self, kind: str, project: str) -> tuple[str, str]:
        rng = self.rng
        if kind == "budget":
            amount = rng.randrange(40, 900)
            return (
                f"The budget for {project} was approved at {amount} thousand euros "
                "after the finance review.",
                f"How much budget was approved for {project}?",
            )
        if kind == "deadline":
            day, weekday = rng.randrange(2, 28), rng.choice(_WEEKDAYS)
            return (
                f"The {project} deadline moved to {weekday} the {day}th because the supplier "
                "is late with the parts.",
                f"When is the new deadline for {project}?",
            )
        if kind == "lead":
            name, city = self.person()[0], rng.choice(_CITIES)
            return (
                f"{name} will lead the {project} kickoff workshop in {city} next month.",
                f"Who leads the {project} kickoff and in which city?",
            )
        if kind == "vendor":
            vendor = rng.choice(_VENDORS)
            return (
                f"For {project} we signed a two-year hosting contract with {vendor}.",
                f"Which hosting vendor did we sign with for {project}?",
            )
        if kind == "bug":
            bug, component = rng.choice(_BUGS)
            return (
                f"The {project} release is blocked by a {bug} in the {component}.",
                f"What is blocking the {project} release?",
            )
        if kind == "room":
            room = rng.randrange(100, 999)
            return (
                f"The {project} design review takes place in room {room} on the third floor.",
                f"In which room is the {project} design review?",
            )
        return self.more_fact(kind, project)

    def more_fact(self, kind: str, project: str) -> tuple[str, str]:
        rng = self.rng
        if kind == "customer":
            customer = rng.choice(_COMPANIES)
            return (
                f"{customer} agreed to be the pilot customer for {project} this spring.",
                f"Which company is the pilot customer of {project}?",
            )
        if kind == "headcount":
            count = rng.randrange(2, 12)
            return (
                f"{project} gets {count} more engineers next quarter, approved by HR.",
                f"How many engineers will join {project}?",
            )
        if kind == "tool":
            tool = rng.choice(_TOOLS)
            return (
                f"The {project} team moves its tickets to {tool} at the end of the month.",
                f"Which ticket tool will the {project} team use?",
            )
        if kind == "risk":
            risk = rng.choice(_RISKS)
            return (
                f"The main risk for {project} right now is {risk}.",
                f"What is the biggest risk for {project}?",
            )
        weekday, hour = rng.choice(_WEEKDAYS), rng.randrange(8, 18)
        return (
            f"The {project} steering meeting is every {weekday} at {hour}:00 from now on.",
            f"When does the {project} steering meeting take place?",
        )

    def own_text(self, greeting_to: str, fact: str, sender: tuple[str, str]) -> str:
        filler = " ".join(self.rng.sample(_FILLER, self.rng.randint(1, 3)))
        lines = [f"Hi {greeting_to.split()[0]},", "", f"{fact} {filler}", ""]
        return "\n".join(lines) + self.signature(sender)

    def signature(self, sender: tuple[str, str]) -> str:
        name = sender[0]
        style = self.rng.randrange(4)
        if style == 0:
            return f"Thanks,\n{name.split()[0]}\n"
        if style == 1:
            title, company = self.rng.choice(_TITLES), self.rng.choice(_COMPANIES)
            phone = f"+1 555 01{self.rng.randrange(100):02d}"
            return f"Best regards,\n{name}\n{title} | {company}\n{phone}\n"
        if style == 2:
            company = self.rng.choice(_COMPANIES)
            return (
                f"Cheers,\n{name.split()[0]}\n\n-- \n{name}\n{company}\n"
                f"This email and its attachments are confidential to {company} and its "
                "addressees; if you received it in error, please delete it.\n"
            )
        return f"Cheers,\n{name.split()[0]}\n\nSent from my iPhone\n"

    def history(self, parent: _Draft) -> str:
        style = self.rng.choices(["gmail", "outlook", "french"], weights=[6, 3, 1])[0]
        stamp = format_datetime(parent.when)
        name, address = parent.sender
        if style == "outlook":
            return (
                f"\n________________________________\nFrom: {name} <{address}>\nSent: {stamp}\n"
                f"To: {parent.recipient[1]}\nSubject: {parent.subject}\n\n{parent.body}"
            )
        quoted = "".join(f"> {line}\n" if line else ">\n" for line in parent.body.splitlines())
        if style == "french":
            return f"\nLe {stamp}, {name} <{address}> a écrit :\n\n{quoted}"
        return f"\nOn {stamp}, {name} <{address}> wrote:\n\n{quoted}"

    def forwarded(self, original: _Draft) -> str:
        return (
            "---------- Forwarded message ---------\n"
            f"From: {original.sender[0]} <{original.sender[1]}>\n"
            f"Date: {format_datetime(original.when)}\nSubject: {original.subject}\n"
            f"To: {original.recipient[1]}\n\n{original.body}"
        )

    def thread(self, index: int, start: datetime) -> None:
        project = _PROJECTS[index % len(_PROJECTS)]
        if index >= len(_PROJECTS):
            project = f"{project} {index // len(_PROJECTS) + 1}"
        thread_id = f"{self.seed:x}t{index:05d}"
        other = self.person()
        kinds = self.rng.sample(_FACT_KINDS, self.rng.randint(2, len(_FACT_KINDS)))
        parent: _Draft | None = None
        for step, kind in enumerate(kinds):
            statement, question = self.fact(kind, project)
            sender, recipient = (other, self.owner) if step % 2 == 0 else (self.owner, other)
            forward_to = None
            if parent is not None and self.rng.random() < 0.15:
                forward_to = self.person()  # adding someone: a forward with a note
                recipient = forward_to
            body = self.own_text(recipient[0], statement, sender)
            if parent is not None:
                body += f"\n{self.forwarded(parent)}" if forward_to else self.history(parent)
            prefix = "Fwd: " if forward_to else ("Re: " if parent else "")
            draft = self.draft(thread_id, step, start, sender, recipient, prefix, project, body)
            draft.parent = parent.rfc_id if parent else None
            self.facts.append((question, [draft.message_id]))
            parent = draft

    def draft(
        self,
        thread_id: str,
        step: int,
        start: datetime,
        sender: tuple[str, str],
        recipient: tuple[str, str],
        prefix: str,
        project: str,
        body: str,
    ) -> _Draft:
        when = start + timedelta(minutes=47 * step + self.rng.randrange(30))
        draft = _Draft(
            message_id=f"{thread_id}m{step:02d}",
            thread_id=thread_id,
            when=when,
            sender=sender,
            recipient=recipient,
            subject=f"{prefix}{project} planning",
            body=body,
            rfc_id=f"<{thread_id}.{step}@{_DOMAINS[0]}>",
            parent=None,
        )
        self.drafts.append(draft)
        return draft

    def forward_only(self, index: int, start: datetime) -> None:
        """An outside announcement forwarded to the owner, by one colleague or by two."""
        project = f"{_PROJECTS[index % len(_PROJECTS)]} announcement {index}"
        statement, question = self.fact(self.rng.choice(_FACT_KINDS), project)
        author = self.person()
        original = _Draft(
            message_id="",
            thread_id="",
            when=start,
            sender=author,
            recipient=("All staff", "all@example.org"),
            subject=f"{project} update",
            body=self.own_text("all", statement, author),
            rfc_id="",
            parent=None,
        )
        answers: list[str] = []
        for copy in range(self.rng.choice([1, 1, 2])):
            thread_id = f"{self.seed:x}f{index:05d}c{copy}"
            note = self.rng.choice(["", "FYI\n\n"])
            draft = self.draft(
                thread_id, 0, start + timedelta(hours=1 + copy), self.person(), self.owner,
                "Fwd: ", original.subject, note + self.forwarded(original),
            )  # fmt: skip
            answers.append(draft.message_id)
        self.facts.append((question, answers))


def generate_threads(
    seed: int, count: int, owner: str, *, max_queries: int = 40
) -> GeneratedThreads:
    """Generate ``count`` thread messages for ``owner`` and questions about them.

    Replies quote the message before them (Gmail ``>`` quotes, an Outlook header block over
    unquoted history, or a French attribution), every message ends in a sign-off, many in a
    signature or "Sent from my iPhone", some forward the thread to a newcomer under a note, and
    some announcements reach the owner only as a forward (sometimes twice). Each message states
    one fact of its own; each query asks for one, answered by the messages that stated it (not
    those that quote it). Pure and deterministic in ``seed``.
    """
    gen = _ThreadGen(seed, owner)
    index = 0
    while len(gen.drafts) < count:
        start = BASE_TIME + timedelta(hours=3 * index)
        if gen.rng.random() < 0.2:
            gen.forward_only(index, start)
        else:
            gen.thread(index, start)
        index += 1
    kept = sorted(gen.drafts, key=lambda d: (d.when, d.message_id))[:count]
    kept_ids = {draft.message_id for draft in kept}
    answerable = [
        ThreadQuery(question, tuple(i for i in answers if i in kept_ids))
        for question, answers in gen.facts
        if any(i in kept_ids for i in answers)
    ]
    queries = gen.rng.sample(answerable, min(max_queries, len(answerable)))
    return GeneratedThreads([_thread_message(d, owner) for d in kept], queries)


def _thread_message(draft: _Draft, owner: str) -> ThreadMessage:
    msg = MIMEText(draft.body, "plain", "utf-8")
    msg["From"] = formataddr(draft.sender, charset="utf-8")
    msg["To"] = formataddr(draft.recipient, charset="utf-8")
    msg["Subject"] = Header(draft.subject, "utf-8").encode()
    msg["Date"] = format_datetime(draft.when)
    msg["Message-ID"] = draft.rfc_id
    if draft.parent:
        msg["In-Reply-To"] = draft.parent
        msg["References"] = draft.parent
    raw = msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    labels = ("SENT",) if draft.sender[1] == owner else ("INBOX",)
    stamp = int(draft.when.timestamp() * 1000)
    return ThreadMessage(draft.message_id, draft.thread_id, raw, labels, stamp)
