"""Prompt cleaning, inline options and validation, including property-based tests over hostile input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.core.catalogue import DEFAULT_MODELS
from bot.core.errors import InvalidRequest
from bot.core.models import ImagineRequest
from bot.core.prompt import MAX_SEED, clean_text, parse_command_text, validate_request

MODELS = {m.name: m for m in DEFAULT_MODELS}


def validate(request: ImagineRequest):
    return validate_request(request, MODELS, "offline", 1000)


def test_inline_options_like_midjourney() -> None:
    request = parse_command_text("a lighthouse at dusk --ar 16:9 --n 4 --seed 7 --model gpt-image-2 --no text, blur")
    assert request == ImagineRequest(
        prompt="a lighthouse at dusk ", negative_prompt="text, blur", model="gpt-image-2",
        aspect_ratio="16:9", count=4, seed=7,
    )


def test_form_options_win_over_inline_ones() -> None:
    request = parse_command_text("a fox --ar 16:9 --seed 1", ImagineRequest("", aspect_ratio="9:16", count=2))
    assert (request.aspect_ratio, request.count, request.seed) == ("9:16", 2, 1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a fox --size big", "don't know the option --size"),
        ("a fox --seed", "needs a value"),
        ("a fox --seed seven", "whole number"),
        ("a fox --n 2 --n 3", "given twice"),
    ],
)
def test_bad_inline_options_are_explained(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_command_text(text)


def test_cleaning_strips_invisible_and_control_characters() -> None:
    assert clean_text("  a\u200bcat\x00 in\n\ta\u202ehat\ufeff  ") == "acat in ahat"
    assert clean_text("🐱🎩") == "🐱🎩"
    assert clean_text("مرحبا بالعالم") == "مرحبا بالعالم"


def test_validation_fills_defaults() -> None:
    valid = validate(ImagineRequest("  a lighthouse  "))
    assert (valid.prompt, valid.model, valid.aspect_ratio, valid.count) == ("a lighthouse", "offline", "1:1", 1)
    assert 0 <= valid.seed <= MAX_SEED


hostile_text = st.lists(
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)
    | st.sampled_from(
        ["\x00", "\u200b", "\u202e", "\ufeff", " --ar ", " --seed ", " --n ", " --no ", "\n", "🐱", "--"]
    ),
    max_size=30,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(hostile_text)
def test_any_text_is_parsed_or_refused_in_plain_words(text: str) -> None:
    """No input makes the parser or the validator crash: either a valid request or an InvalidRequest."""
    try:
        valid = validate(parse_command_text(text))
    except InvalidRequest as error:
        assert error.user_message and "Traceback" not in error.user_message
        return
    assert 2 <= len(valid.prompt) <= 1000
    assert valid.prompt == clean_text(valid.prompt)
    assert "\x00" not in valid.prompt and "\u200b" not in valid.prompt
    assert 1 <= valid.count <= 4 and 0 <= valid.seed <= MAX_SEED


@settings(max_examples=200, deadline=None)
@given(
    count=st.integers(min_value=-(2**63), max_value=2**63),
    seed=st.one_of(st.none(), st.integers(min_value=-(2**70), max_value=2**70)),
    ratio=st.one_of(st.none(), st.text(max_size=10), st.sampled_from(["16:9", "1:1", "21:9"])),
    model=st.one_of(st.none(), st.text(max_size=40), st.sampled_from(["offline", "gpt-image-2"])),
)
def test_out_of_range_options_are_refused(count: int, seed: int | None, ratio: str | None, model: str | None) -> None:
    request = ImagineRequest("a fine prompt", count=count, seed=seed, aspect_ratio=ratio, model=model)
    try:
        valid = validate(request)
    except InvalidRequest:
        return
    assert 1 <= valid.count <= 4
    assert valid.seed == seed if seed is not None else True
    assert valid.model in MODELS
