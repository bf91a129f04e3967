"""Prompts of the shapes world: "a red cube", "a red cube, blurry, noisy", "a red cube, front view", "" ...

A prompt is parsed into sets of colours, shapes, descriptor words and views. Empty sets mean "no restriction", so ""
is the whole world and "a cube" is every colour of cube. Multi-word phrases ("bad structure", "out of focus",
"low-resolution") are matched as phrases, longest first, inside each comma-separated segment; hyphens count as spaces.
Articles and fillers ("a", "photo of", ...) are ignored; any other word raises ValueError listing the vocabulary.

The paper's suffix strings live in scoredist.prompts; this module only knows the world's words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from scoredist.guidance.exact.world import COLOUR_RGB, SHAPE_SDFS, VARIANTS, WORD_TO_VARIANT

COLOURS: tuple[str, ...] = tuple(COLOUR_RGB)
SHAPES: tuple[str, ...] = tuple(SHAPE_SDFS)
DESCRIPTORS: tuple[str, ...] = tuple(word for _, words in VARIANTS.values() for word in words)
VIEWS: tuple[str, ...] = ("front view", "side view", "back view", "overhead view")
FILLERS: tuple[str, ...] = ("a", "an", "the", "photo of", "of", "a photo of", "an image of", "image of", "picture of")


@dataclass(frozen=True)
class ParsedPrompt:
    """What a prompt selects; an empty tuple means "any". `variants` are the corruption variants the descriptors name
    (in the order first named), e.g. ("blurry", "noisy"); ("clean",) for the target-suffix words."""

    colours: tuple[str, ...] = ()
    shapes: tuple[str, ...] = ()
    variants: tuple[str, ...] = ()
    views: tuple[str, ...] = ()


def _normalise(phrase: str) -> tuple[str, ...]:
    return tuple(phrase.lower().replace("-", " ").split())


# phrase (as a token tuple) → (kind, canonical word); longest phrases are tried first.
_PHRASES: dict[tuple[str, ...], tuple[str, str]] = {
    **{_normalise(w): ("filler", w) for w in FILLERS},
    **{_normalise(w): ("colour", w) for w in COLOURS},
    **{_normalise(w): ("shape", w) for w in SHAPES},
    **{_normalise(w): ("descriptor", w) for w in DESCRIPTORS},
    **{_normalise(w): ("view", w) for w in VIEWS},
}
_MAX_LEN = max(len(p) for p in _PHRASES)


def vocabulary_message() -> str:
    """The vocabulary, for error messages."""
    return (
        f"colours: {', '.join(COLOURS)}; shapes: {', '.join(SHAPES)}; descriptors: {', '.join(DESCRIPTORS)}; "
        f"views: {', '.join(VIEWS)}; ignored fillers: {', '.join(FILLERS)}"
    )


def _match_segment(tokens: list[str], prompt: str) -> list[tuple[str, str]]:
    """Greedy longest-phrase match of one comma-separated segment → [(kind, canonical word)]."""
    found, i = [], 0
    while i < len(tokens):
        for n in range(min(_MAX_LEN, len(tokens) - i), 0, -1):
            hit = _PHRASES.get(tuple(tokens[i : i + n]))
            if hit is not None:
                found.append(hit)
                i += n
                break
        else:
            raise ValueError(
                f"unknown word {tokens[i]!r} in prompt {prompt!r}. The shapes world knows {vocabulary_message()}"
            )
    return found


@lru_cache(maxsize=4096)
def parse_prompt(prompt: str) -> ParsedPrompt:
    """Parse a shapes-world prompt; raises ValueError (listing the vocabulary) on an unknown word."""
    kinds: dict[str, list[str]] = {"colour": [], "shape": [], "descriptor": [], "view": [], "filler": []}
    for segment in prompt.split(","):
        tokens = [t for t in re.split(r"[\s\-]+", segment.lower().strip().rstrip(".")) if t]
        for kind, word in _match_segment(tokens, prompt):
            if word not in kinds[kind]:
                kinds[kind].append(word)
    variants = tuple(dict.fromkeys(WORD_TO_VARIANT[w] for w in kinds["descriptor"]))
    return ParsedPrompt(tuple(kinds["colour"]), tuple(kinds["shape"]), variants, tuple(kinds["view"]))
