"""generate_threads: deterministic threads with quotes and forwards, and answerable questions."""

from __future__ import annotations

from email import message_from_bytes, policy
from email.message import EmailMessage

from devstack.gmail_emulator.generator import generate_threads
from streams.stages.reply_text import strip_reply_text

OWNER = "me@inboxflow.test"


def body(raw: bytes) -> str:
    message = message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def test_the_same_seed_gives_the_same_threads_and_questions() -> None:
    first, again = generate_threads(3, 60, OWNER), generate_threads(3, 60, OWNER)
    assert first == again
    assert generate_threads(4, 60, OWNER) != first


def test_exactly_the_count_asked_oldest_first_with_unique_ids() -> None:
    threads = generate_threads(7, 75, OWNER, max_queries=25)
    stamps = [m.internal_date for m in threads.messages]
    assert len(threads.messages) == 75
    assert stamps == sorted(stamps)
    assert len({m.message_id for m in threads.messages}) == 75
    assert len(threads.queries) == 25


def test_every_answer_is_a_generated_message_whose_own_text_names_the_subject() -> None:
    threads = generate_threads(7, 120, OWNER)
    texts = {m.message_id: body(m.raw) for m in threads.messages}
    for query in threads.queries:
        assert query.answer_ids
        # "Who leads the Jasper kickoff and in which city?" -> ["Jasper"]
        names = [word.strip("?") for word in query.text.split()[1:] if word[0].isupper()]
        assert names
        for answer in query.answer_ids:
            own = strip_reply_text(texts[answer])
            assert all(name in own for name in names), (query, own)


def test_replies_quote_and_some_mail_arrives_only_forwarded() -> None:
    threads = generate_threads(7, 120, OWNER)
    texts = [body(m.raw) for m in threads.messages]
    assert any("wrote:\n\n> " in text for text in texts)
    assert any("\nFrom: " in text and "\nSent: " in text for text in texts)  # Outlook style
    forwards = [t for t in texts if t.lstrip().startswith(("---------- Forwarded", "FYI"))]
    assert forwards
    assert all(strip_reply_text(text) == text for text in forwards)  # nothing stripped
    assert {m.label_ids for m in threads.messages} == {("INBOX",), ("SENT",)}
