"""chunk_text: boundaries, bounds, overlap, coverage and determinism; chunk_hash."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.stages.chunking import Chunk, chunk_hash, chunk_text


def test_empty_and_whitespace_text_give_no_chunks() -> None:
    assert chunk_text("") == []
    assert chunk_text(" \n\t\n ") == []


def test_short_text_is_one_trimmed_chunk() -> None:
    assert chunk_text("  Hello world.  \n") == [Chunk(0, "Hello world.", 2, 14)]


def test_splits_on_paragraph_boundaries_first() -> None:
    first = "First paragraph sentence one. Sentence two is here."
    second = "Second paragraph. It goes on for a while longer than the first."
    text = f"{first}\n\n{second}"
    chunks = chunk_text(text, max_chars=80, overlap=0)
    assert [c.text for c in chunks] == [first, second]


def test_splits_on_sentence_boundaries_inside_a_paragraph() -> None:
    text = "Alpha beta gamma delta. Epsilon zeta eta theta. Iota kappa lambda mu."
    chunks = chunk_text(text, max_chars=50, overlap=0)
    assert [c.text for c in chunks] == [
        "Alpha beta gamma delta. Epsilon zeta eta theta.",
        "Iota kappa lambda mu.",
    ]


def test_overlap_repeats_the_tail_from_a_word_start() -> None:
    text = " ".join(f"word{i:03d}" for i in range(100))
    chunks = chunk_text(text, max_chars=100, overlap=30)
    assert len(chunks) > 1
    for previous, current in itertools.pairwise(chunks):
        assert current.start < previous.end  # overlaps
        assert previous.end - current.start <= 30
        assert current.text.startswith("word")


def test_text_without_spaces_is_cut_hard() -> None:
    text = "x" * 2500
    chunks = chunk_text(text, max_chars=1000, overlap=100)
    assert [len(c.text) for c in chunks] == [1000, 1000, 700]
    assert chunks[1].start == 900


def test_cjk_sentences() -> None:
    text = "今日は晴れです。明日は雨でしょう。" * 20
    chunks = chunk_text(text, max_chars=60, overlap=0)
    assert all(c.text.endswith("。") for c in chunks[:-1])


@pytest.mark.parametrize(("max_chars", "overlap"), [(0, 0), (10, 10), (10, -1)])
def test_invalid_arguments(max_chars: int, overlap: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        chunk_text("text", max_chars=max_chars, overlap=overlap)


_texts = st.text(alphabet=st.sampled_from(list("abc de.!?\n\n\t。é\u3000")), max_size=3000)


@settings(max_examples=300, deadline=None)
@given(_texts, st.integers(1, 400), st.integers(0, 399))
def test_chunks_cover_the_text_within_bounds(text: str, max_chars: int, overlap: int) -> None:
    overlap = overlap % max_chars
    chunks = chunk_text(text, max_chars=max_chars, overlap=overlap)

    assert [c.index for c in chunks] == list(range(len(chunks)))
    covered = [False] * len(text)
    for chunk in chunks:
        assert chunk.text
        assert chunk.text == chunk.text.strip()
        assert text[chunk.start : chunk.end] == chunk.text
        assert len(chunk.text) <= max_chars
        for i in range(chunk.start, chunk.end):
            covered[i] = True
    assert all(covered[i] for i, ch in enumerate(text) if not ch.isspace())
    for previous, current in itertools.pairwise(chunks):
        assert previous.start < current.start
        assert current.start >= previous.end - overlap
    assert chunk_text(text, max_chars=max_chars, overlap=overlap) == chunks


@settings(max_examples=200, deadline=None)
@given(_texts, st.integers(0, 12))
def test_a_limit_returns_the_first_chunks_and_nothing_else(text: str, limit: int) -> None:
    every = chunk_text(text, max_chars=50, overlap=10)

    assert chunk_text(text, max_chars=50, overlap=10, limit=limit) == every[:limit]


def test_a_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="limit"):
        chunk_text("text", limit=-1)


def test_chunk_hash_ignores_spacing_and_unicode_composition_only() -> None:
    assert chunk_hash("Café  au\n lait ") == chunk_hash("Cafe\u0301 au lait")
    assert chunk_hash("Café au lait") != chunk_hash("Cafe au lait")
    assert chunk_hash("Budget: 42k") != chunk_hash("budget: 42k")
    assert len(chunk_hash("")) == 32


@given(st.text(max_size=200), st.text(alphabet=" \t\n", min_size=1, max_size=3))
def test_chunk_hash_is_the_same_for_any_whitespace_between_words(text: str, gap: str) -> None:
    words = text.split()
    assert chunk_hash(gap.join(words)) == chunk_hash(" ".join(words))
