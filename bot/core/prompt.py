"""Turning what a user typed into a valid request: cleaning, inline `--flags`, bounds."""

from __future__ import annotations

import functools
import re
import secrets
import unicodedata
from collections.abc import Sequence
from dataclasses import replace

from bot.core.catalogue import ASPECT_RATIOS, ModelSpec
from bot.core.errors import InvalidRequest
from bot.core.models import ImagineRequest, Request

MAX_COUNT = 4
MAX_SEED = 2**32 - 1
MIN_PROMPT_CHARS = 2

# Midjourney-style aliases people type.
_FLAG_ALIASES = {
    "--ar": "aspect_ratio",
    "--aspect": "aspect_ratio",
    "--n": "count",
    "--count": "count",
    "--seed": "seed",
    "--model": "model",
    "--m": "model",
    "--no": "negative_prompt",
}
_FLAG_RE = re.compile(r"(?:(?<=\s)|^)(--[A-Za-z]+)\b")


def clean_text(text: str) -> str:
    """NFC-normalise, drop control, format (zero-width, bidi) and private-use characters, collapse spaces."""
    if text.isascii() and text.isprintable():
        return " ".join(text.split())  # nothing to normalise or drop: skip the per-character walk
    normalised = unicodedata.normalize("NFC", text)
    kept = []
    for char in normalised:
        category = unicodedata.category(char)
        if category in ("Cc", "Cf", "Cs", "Co", "Cn"):
            kept.append(" " if char in "\t\n\r\x0b\x0c" else "")
        else:
            kept.append(char)
    return " ".join("".join(kept).split())


def parse_inline_options(text: str) -> ImagineRequest:
    """Split `a lighthouse --ar 16:9 --seed 7 --no text` into the prompt and its options.

    Raises InvalidRequest for an unknown flag or a flag without its value.
    """
    parts = _FLAG_RE.split(text)
    prompt = parts[0]
    values: dict[str, str] = {}
    for flag, value in zip(parts[1::2], parts[2::2], strict=True):
        field_name = _FLAG_ALIASES.get(flag.lower())
        if field_name is None:
            known = ", ".join(sorted(_FLAG_ALIASES))
            raise InvalidRequest(f"I don't know the option {flag}. Options: {known}.")
        value = value.strip()
        if not value:
            raise InvalidRequest(f"The option {flag} needs a value, e.g. {_example(flag)}.")
        if field_name != "negative_prompt":
            first, _, rest = value.partition(" ")
            value = first
            prompt = f"{prompt} {rest}" if rest.strip() else prompt
        if field_name in values:
            raise InvalidRequest(f"The option {flag} was given twice.")
        values[field_name] = value
    return ImagineRequest(
        prompt=prompt,
        negative_prompt=values.get("negative_prompt"),
        model=values.get("model"),
        aspect_ratio=values.get("aspect_ratio"),
        count=_parse_int(values["count"], "--n") if "count" in values else None,
        seed=_parse_int(values["seed"], "--seed") if "seed" in values else None,
    )


def merge(explicit: ImagineRequest, inline: ImagineRequest) -> ImagineRequest:
    """Options chosen in a command form win over the same option typed inside the prompt."""
    return replace(
        inline,
        negative_prompt=explicit.negative_prompt if explicit.negative_prompt is not None else inline.negative_prompt,
        model=explicit.model or inline.model,
        aspect_ratio=explicit.aspect_ratio or inline.aspect_ratio,
        count=explicit.count if explicit.count is not None else inline.count,
        seed=explicit.seed if explicit.seed is not None else inline.seed,
    )


def parse_command_text(text: str, explicit: ImagineRequest | None = None) -> ImagineRequest:
    """The one entry point front ends use: typed text (with inline flags) plus any form options."""
    inline = parse_inline_options(text)
    return merge(explicit, inline) if explicit is not None else inline


def validate_request(
    request: ImagineRequest,
    models: dict[str, ModelSpec],
    default_model: str,
    max_chars: int,
    banned_words: Sequence[str] = (),
) -> Request:
    """Every option set and within bounds, or InvalidRequest saying what is wrong in plain words."""
    prompt = clean_text(request.prompt)
    if len(prompt) < MIN_PROMPT_CHARS:
        raise InvalidRequest("Please describe the image you want, e.g. `/imagine a lighthouse at dusk`.")
    if len(prompt) > max_chars:
        raise InvalidRequest(f"That prompt is {len(prompt)} characters; the limit is {max_chars}.")
    if contains_banned(prompt, banned_words):
        raise InvalidRequest("That prompt contains something this bot doesn't allow. Nothing was charged.")
    negative = clean_text(request.negative_prompt) if request.negative_prompt else None
    if negative and len(negative) > max_chars:
        raise InvalidRequest(f"The negative prompt is too long; the limit is {max_chars} characters.")

    name = (request.model or default_model).strip()
    model = models.get(name) or models.get(name.lower())
    if model is None:
        raise InvalidRequest(f"There is no model called {_quote(name)}. Models: {', '.join(models)}.")

    ratio = (request.aspect_ratio or "1:1").strip()
    if ratio not in ASPECT_RATIOS:
        raise InvalidRequest(f"Aspect ratio {_quote(ratio)} isn't supported. Choose one of {', '.join(ASPECT_RATIOS)}.")
    if ratio not in model.aspect_ratios:
        raise InvalidRequest(f"{model.name} doesn't do {ratio}. It does {', '.join(model.aspect_ratios)}.")

    count = 1 if request.count is None else request.count
    if not 1 <= count <= MAX_COUNT:
        raise InvalidRequest(f"You can ask for 1 to {MAX_COUNT} images at once, not {count}.")

    seed = request.seed
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise InvalidRequest(f"The seed must be a whole number from 0 to {MAX_SEED}.")
    return Request(
        prompt=prompt,
        negative_prompt=negative or None,
        model=model.name,
        aspect_ratio=ratio,
        count=count,
        seed=random_seed() if seed is None else seed,
    )


def contains_banned(text: str, banned_words: Sequence[str]) -> bool:
    """Whether `text` (cleaned) has a banned word or phrase, compared as words after `fold`.

    A match is a banned entry's words, in order, as whole words of the text, with anything between them
    ("bad phrase", "bad-phrase"), or written together as one word ("badphrase"). Letters spelled out one
    by one ("f o r b i d d e n", "f.o.r.b.i.d.d.e.n") are read as a word. A banned word inside a longer
    word ("ass" in "class") is not a match."""
    forms = _banned_forms(tuple(banned_words))
    if not forms:
        return False
    words = _WORD.findall(fold(text))
    line = f" {' '.join(words)} "
    if any(f" {spaced} " in line or f" {joined} " in line for spaced, joined in forms):
        return True
    return any(joined in spelled for spelled in _spelled_out(words) for _, joined in forms)


def fold(text: str) -> str:
    """Text reduced to what it looks like, for matching: compatibility forms (fullwidth, ligatures,
    mathematical letters) made plain, case folded, accents and other combining marks dropped, and letters
    of other scripts that look like a Latin letter or a digit (Unicode's confusables) made that letter."""
    if text.isascii():
        return text.lower()  # nothing to normalise: skip the per-character work
    plain = unicodedata.normalize("NFD", unicodedata.normalize("NFKC", text).casefold())
    marks_dropped = "".join(char for char in plain if not unicodedata.category(char).startswith("M"))
    return marks_dropped.translate(_lookalikes())


# A word of text: letters and digits; anything else (spaces, punctuation, "_") separates words.
_WORD = re.compile(r"[^\W_]+")


@functools.lru_cache(maxsize=8)
def _banned_forms(banned_words: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """Each banned entry as its words spaced and joined, folded like the text they are matched against."""
    forms = []
    for entry in banned_words:
        words = _WORD.findall(fold(entry))
        if words:
            forms.append((" ".join(words), "".join(words)))
    return tuple(forms)


def _spelled_out(words: list[str]) -> list[str]:
    """Runs of two or more one-character words, each joined: "f o r b i d" is read as "forbid"."""
    runs: list[str] = []
    current: list[str] = []
    for word in [*words, ""]:
        if len(word) == 1:
            current.append(word)
            continue
        if len(current) > 1:
            runs.append("".join(current))
        current = []
    return runs


@functools.cache
def _lookalikes() -> dict[int, str]:
    """Every non-ASCII character that Unicode's confusables table says looks like one ASCII letter or digit,
    mapped to it (Greek omicron and Cyrillic о to "o", Cyrillic а to "a"...). Loaded on first need."""
    # The table ships inside the pinned package (data from Unicode's confusables.txt); nothing is fetched.
    from confusable_homoglyphs.confusables import confusables_data

    table: dict[int, str] = {}
    for char, homoglyphs in confusables_data.items():
        if len(char) != 1 or char.isascii():
            continue
        latin = {h["c"].casefold() for h in homoglyphs if len(h["c"]) == 1 and h["c"].isascii() and h["c"].isalnum()}
        if len(latin) == 1:
            table[ord(char)] = latin.pop()
    return table


def random_seed() -> int:
    return secrets.randbelow(MAX_SEED + 1)


def _parse_int(value: str, flag: str) -> int:
    try:
        return int(value, 10)
    except ValueError:
        raise InvalidRequest(f"The option {flag} needs a whole number, not {_quote(value)}.") from None


def _example(flag: str) -> str:
    return {"--ar": "--ar 16:9", "--aspect": "--aspect 16:9", "--no": "--no text"}.get(flag, f"{flag} 2")


def _quote(value: str, limit: int = 40) -> str:
    shown = value if len(value) <= limit else value[: limit - 1] + "…"
    return f"“{shown}”"
