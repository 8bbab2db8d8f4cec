"""BANNED_WORDS matching: the evasions people type are caught; ordinary words that merely contain a
banned word are not."""

from __future__ import annotations

import timeit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.core.catalogue import DEFAULT_MODELS
from bot.core.errors import InvalidRequest
from bot.core.models import ImagineRequest
from bot.core.prompt import clean_text, contains_banned, validate_request

# As BANNED_WORDS=forbidden,bad phrase,ass reaches the service (Settings splits and lower-cases it).
BANNED = ("forbidden", "bad phrase", "ass")
MODELS = {m.name: m for m in DEFAULT_MODELS}


def banned(text: str) -> bool:
    return contains_banned(clean_text(text), BANNED)


@pytest.mark.parametrize(
    "text",
    [
        "a forbidden castle",
        "FORBIDDEN!",
        "ｆｏｒｂｉｄｄｅｎ",  # fullwidth
        "fοrbidden",  # Greek omicron
        "fоrbiddеn",  # Cyrillic о and е
        "f o r b i d d e n",
        "f.o.r.b.i.d.d.e.n",
        "a f-o-r-b-i-d-d-e-n tower",
        "forbiddén",
        "forbidde\u0301n",  # a combining accent
        "forbidden\u0301",
        "for\u200bbidden",  # a zero-width space
        "forb\ufe0fidden",  # a variation selector
        "𝐟𝐨𝐫𝐛𝐢𝐝𝐝𝐞𝐧",  # mathematical bold
        "badphrase",
        "bad-phrase",
        "bad_phrase",
        "BAD   Phrase",
        "b a d p h r a s e",
        "ＢＡＤ ＰＨＲＡＳＥ",
        "kick аss",  # Cyrillic а
        "a s s",
    ],
)
def test_evasions_are_caught(text: str) -> None:
    assert banned(text)


@pytest.mark.parametrize(
    "text",
    [
        "a classic glass bass in a grassy pass",  # "ass" inside ordinary words
        "an assassin's passage",
        "the forbiddenness of it",  # a longer word
        "bad phrases",
        "a bad day, phrase it well",  # the words, but not next to each other
        "badminton phrase",
        "an al pacino portrait",
        "Café naïve façade, Ελληνικά, русский текст",
        "A B C D",  # letters spelled out, but no banned word in them
    ],
)
def test_ordinary_words_are_not_refused(text: str) -> None:
    assert not banned(text)


def test_the_refusal_is_the_usual_plain_one_before_anything_else() -> None:
    with pytest.raises(InvalidRequest, match="doesn't allow"):
        validate_request(ImagineRequest("a fοrbidden city"), MODELS, "offline", 1000, BANNED)


LOOKALIKES = {"o": ["o", "O", "ο", "о", "ｏ", "ő"], "i": ["i", "I", "і", "ｉ", "í"], "e": ["e", "E", "е", "ｅ", "é"]}
SEPARATORS = ["", " ", ".", "-", "_", "·", "\u00a0", "*", " / "]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_mix_of_lookalikes_and_separators_is_caught(data: st.DataObject) -> None:
    letters = [data.draw(st.sampled_from(LOOKALIKES.get(c, [c, c.upper()]))) for c in "forbidden"]
    # One separator for the whole word: either the word is written whole or spelled out letter by letter.
    separator = data.draw(st.sampled_from(SEPARATORS))
    before, after = data.draw(st.sampled_from(["", "a ", "the big "])), data.draw(st.sampled_from(["", " city", "!"]))
    assert banned(before + separator.join(letters) + after)


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.text(alphabet="abcdefghijklmnopqrstuvwxyz", max_size=6),
    suffix=st.text(alphabet="abcdefghijklmnopqrstuvwxyz", max_size=6),
)
def test_a_banned_word_inside_a_longer_word_is_not_a_match(prefix: str, suffix: str) -> None:
    word = f"{prefix}ass{suffix}"
    if word == "ass":
        return
    assert not banned(f"a {word} on a table")


def test_plain_ascii_prompts_stay_cheap() -> None:
    prompt = clean_text("a lighthouse at dusk over a stormy sea, oil painting, dramatic light, " * 3)
    many = tuple(f"word{i}" for i in range(50)) + BANNED
    contains_banned(prompt, many)  # the forms of the list are built once
    seconds = min(timeit.repeat(lambda: contains_banned(prompt, many), number=200, repeat=3)) / 200
    # A check per prompt must be negligible next to everything else a request does.
    assert seconds < 0.0005
