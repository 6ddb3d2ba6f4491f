"""Subtitles of the studio's videos: a scene's narration text cut into cues, timed within the narration,
written as WebVTT and burned into frames.

A cue holds at most two lines of at most ``MAX_LINE_CHARS`` characters, broken at spaces (the length
subtitle guidelines such as the BBC's and Netflix's use), and a cue starts at a sentence when the one before
already fills a line, so a short sentence is not left alone on the screen. Cues share the narration's time in
proportion to their length in characters, which is how long a voice takes to say them at an even pace.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

MAX_LINE_CHARS = 42
MAX_LINES = 2
SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]]*$")
FONT = cv2.FONT_HERSHEY_DUPLEX
# Hershey fonts draw ASCII only: typographic punctuation is given its ASCII form rather than a "?".
ASCII_FORMS = str.maketrans({"‘": "'", "’": "'", "“": '"', "”": '"', "–": "-", "—": "-", "…": "...",
                             "\u00a0": " "})


@dataclass(frozen=True)
class Cue:
    start_s: float
    end_s: float
    text: str      # lines separated by "\n"


def cue_texts(text: str) -> list[str]:
    """A scene's text as the texts of its cues, in order: each one or two lines of at most MAX_LINE_CHARS."""
    cues: list[list[str]] = []
    current: list[str] = []
    for word in _words(text):
        if current and not _fits([*current, word]):
            cues.append(current)
            current = []
        current.append(word)
        if SENTENCE_END.search(word) and len(" ".join(current)) >= MAX_LINE_CHARS:
            cues.append(current)
            current = []
    if current:
        cues.append(current)
    return ["\n".join(_balanced_lines(words)) for words in cues]


def timed_cues(text: str, start_s: float, duration_s: float) -> list[Cue]:
    """The cues of ``text`` spread over [start_s, start_s + duration_s], each for a share of the time
    proportional to its length; each cue ends where the next begins, so nothing flickers between them."""
    texts = cue_texts(text)
    weights = np.array([len(cue) for cue in texts], dtype=np.float64)
    if not texts or duration_s <= 0:
        return []
    bounds = start_s + duration_s * np.concatenate([[0.0], np.cumsum(weights) / weights.sum()])
    return [Cue(float(bounds[i]), float(bounds[i + 1]), cue) for i, cue in enumerate(texts)]


def webvtt(cues: Sequence[Cue]) -> str:
    """A WebVTT document of the cues (numbered, HH:MM:SS.mmm times, text escaped so it is never read as tags)."""
    blocks = ["WEBVTT"]
    for number, cue in enumerate(cues, start=1):
        text = cue.text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        blocks.append(f"{number}\n{vtt_timestamp(cue.start_s)} --> {vtt_timestamp(cue.end_s)}\n{text}")
    return "\n\n".join(blocks) + "\n"


def write_webvtt(path: Path, cues: Sequence[Cue]) -> None:
    Path(path).write_text(webvtt(cues), encoding="utf-8")


def vtt_timestamp(seconds: float) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    return f"{hours:02d}:{minutes:02d}:{millis // 1000:02d}.{millis % 1000:03d}"


def draw_cue(frame: np.ndarray, text: str) -> None:
    """Burn a cue into a BGR frame, in place: white text with a dark outline on a translucent dark band,
    centred near the bottom, its size scaled to the frame's height (and down further if a line is too wide)."""
    height, width = frame.shape[:2]
    stamp = _stamp(drawable(text), width, height)
    x0, y0, x1, y1 = stamp.band
    band = frame[y0:y1, x0:x1]
    cv2.add(cv2.multiply(band, stamp.keep, scale=1 / 255), stamp.ink, dst=band)


def drawable(text: str) -> str:
    """Text as OpenCV's fonts can draw it: accents dropped, typographic punctuation as ASCII, others '?'."""
    decomposed = unicodedata.normalize("NFKD", text.translate(ASCII_FORMS))
    kept = "".join(char for char in decomposed if not unicodedata.combining(char))
    return kept.encode("ascii", "replace").decode("ascii")


@dataclass(frozen=True)
class _Stamp:
    """A cue drawn once, to be laid on each frame it shows on (drawing text anew each frame costs ten times more)."""

    band: tuple[int, int, int, int]   # x0, y0, x1, y1 in the frame
    keep: np.ndarray                  # how much of the picture is kept (of 255) at each pixel of the band
    ink: np.ndarray                   # what is added to it: white letters, already weighted by their coverage


@lru_cache(maxsize=16)    # the cues on screen now, across the videos being made at once
def _stamp(text: str, width: int, height: int) -> _Stamp:
    lines = text.split("\n")
    line_px = max(8, round(height / 20))
    scale = cv2.getFontScaleFromHeight(FONT, line_px, 1)
    thickness = max(1, round(line_px / 18))
    widest = max(cv2.getTextSize(line, FONT, scale, thickness)[0][0] for line in lines)
    if widest > 0.92 * width:
        scale, line_px = scale * 0.92 * width / widest, max(6, round(line_px * 0.92 * width / widest))
        widest = max(cv2.getTextSize(line, FONT, scale, thickness)[0][0] for line in lines)
    gap, pad = round(line_px * 0.55), round(line_px * 0.45)
    bottom = height - round(height * 0.06)
    top = bottom - len(lines) * line_px - (len(lines) - 1) * gap - pad
    x0, y0 = max(0, (width - widest) // 2 - pad), max(0, top)
    x1, y1 = min(width, (width + widest) // 2 + pad), min(height, bottom + pad)
    ink, coverage = np.zeros((y1 - y0, x1 - x0, 3), np.uint8), np.zeros((y1 - y0, x1 - x0), np.uint8)
    for row, line in enumerate(lines):
        text_width = cv2.getTextSize(line, FONT, scale, thickness)[0][0]
        origin = ((width - text_width) // 2 - x0, bottom - (len(lines) - 1 - row) * (line_px + gap) - y0)
        cv2.putText(coverage, line, origin, FONT, scale, 255, thickness + 2, cv2.LINE_AA)
        cv2.putText(ink, line, origin, FONT, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    # The picture shows through the band at 45% (darkened, not hidden), and not at all under the letters and
    # their outlines; anti-aliased edges are in between.
    cover = np.repeat(coverage[..., None].astype(np.float32) / 255, 3, axis=2)
    keep = np.round(255 * 0.45 * (1 - cover)).astype(np.uint8)
    return _Stamp((x0, y0, x1, y1), keep, np.round(ink * cover).astype(np.uint8))


def _words(text: str) -> list[str]:
    """The words of the text; one longer than a line is cut into pieces of a line each."""
    words = []
    for word in text.split():
        words.extend(word[i:i + MAX_LINE_CHARS] for i in range(0, len(word), MAX_LINE_CHARS))
    return words


def _fits(words: list[str]) -> bool:
    return max(len(line) for line in _balanced_lines(words)) <= MAX_LINE_CHARS


def _balanced_lines(words: list[str]) -> list[str]:
    """One line when the words fit on one; else two, broken where the longer line is shortest."""
    whole = " ".join(words)
    if len(whole) <= MAX_LINE_CHARS or len(words) == 1:
        return [whole]
    splits = [(" ".join(words[:k]), " ".join(words[k:])) for k in range(1, len(words))]
    return list(min(splits, key=lambda pair: max(len(pair[0]), len(pair[1]))))
