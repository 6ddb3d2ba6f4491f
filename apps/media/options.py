"""What a studio job is asked for, checked field by field before it is queued.

Forms send strings and JSON bodies send numbers and booleans: both are read here, so the pages, the API
and the job model share one set of rules and one set of messages.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

from services.vision.picture_styles import STYLES

# The espeak-ng voices the studio offers (names `espeak-ng --voices` lists, which the audio service accepts),
# with the label a form shows.
VOICE_LABELS = {
    "en-us": "American English",
    "en-gb": "British English",
    "en-gb-scotland": "Scottish English",
    "en-gb-x-rp": "Received Pronunciation",
    "en-us-nyc": "New York City English",
    "en-029": "Caribbean English",
}
VOICES = tuple(VOICE_LABELS)

MAX_PROMPT_CHARS = 1000
MIN_SCENES, MAX_SCENES = 1, 12
MIN_WORDS_PER_MINUTE, MAX_WORDS_PER_MINUTE = 80, 300
MAX_SEED = 2**32 - 1
TRUE_WORDS, FALSE_WORDS = ("true", "on", "yes", "1"), ("false", "off", "no", "0", "")


@dataclass(frozen=True)
class JobOptions:
    prompt: str
    scenes: int = 4
    voice: str = "en-us"
    words_per_minute: int = 150
    style: str = "storybook"
    music: bool = True
    seed: int | None = None   # None: the studio picks one when the job is queued, and records it

    def as_dict(self) -> dict:
        return asdict(self)


class InvalidJob(ValueError):
    """Options that cannot make a job: one (field, description) per problem."""

    def __init__(self, violations: list[tuple[str, str]]):
        self.violations = violations
        super().__init__("; ".join(f"{f}: {d}" for f, d in violations))


FIELDS = tuple(f.name for f in fields(JobOptions))


def job_options(values: Mapping[str, object]) -> JobOptions:
    """JobOptions from a form or a JSON object; InvalidJob naming every field that is wrong."""
    violations: list[tuple[str, str]] = [(name, "unknown field; the fields are " + ", ".join(FIELDS))
                                         for name in values if name not in FIELDS]
    checked = {}
    for name, check in CHECKS.items():
        if name in values:
            try:
                checked[name] = check(values[name])
            except ValueError as problem:
                violations.append((name, str(problem)))
    if "prompt" not in values:
        violations.append(("prompt", "required: what the story is about"))
    if violations:
        raise InvalidJob(violations)
    return JobOptions(**checked)


def _prompt(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("a text")
    text = value.strip()
    if not text:
        raise ValueError("empty: say what the story is about")
    if len(text) > MAX_PROMPT_CHARS:
        raise ValueError(f"{len(text)} characters; at most {MAX_PROMPT_CHARS}")
    # Newlines and tabs are control characters too: a prompt is one line, as the story request it becomes.
    control = next((c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn")), None)
    if control is not None:
        raise ValueError(f"control character U+{ord(control):04X} (newlines and tabs included); "
                         "write the prompt on one line of plain text")
    return text


def _whole_number(value: object, low: int, high: int, unit: str = "") -> int:
    text = str(value).strip() if isinstance(value, (int, str)) and not isinstance(value, bool) else ""
    if not (text.isascii() and text.lstrip("-").isdigit()) or text.count("-") > 1 or text.startswith("-", 1):
        raise ValueError(f"{str(value)[:32]!r} is not a whole number; give {low} to {high}{unit}")
    number = int(text)
    if not low <= number <= high:
        raise ValueError(f"{number}; give {low} to {high}{unit}")
    return number


def _scenes(value: object) -> int:
    return _whole_number(value, MIN_SCENES, MAX_SCENES, " scenes")


def _words_per_minute(value: object) -> int:
    return _whole_number(value, MIN_WORDS_PER_MINUTE, MAX_WORDS_PER_MINUTE, " words per minute")


def _voice(value: object) -> str:
    if value not in VOICES:
        raise ValueError(f"unknown voice {str(value)[:64]!r}; choose one of {', '.join(VOICES)}")
    return value


def _style(value: object) -> str:
    if value not in STYLES:
        raise ValueError(f"unknown style {str(value)[:64]!r}; choose one of {', '.join(repr(s) for s in STYLES)}")
    return value


def _music(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS + FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    raise ValueError("true or false")


def _seed(value: object) -> int | None:
    if value is None or value == "":
        return None
    return _whole_number(value, 0, MAX_SEED)


CHECKS = {"prompt": _prompt, "scenes": _scenes, "voice": _voice, "words_per_minute": _words_per_minute,
          "style": _style, "music": _music, "seed": _seed}
