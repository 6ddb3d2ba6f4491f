"""The picture library: captioned pictures that image generation retrieves by meaning.

Built in: photographs that ship inside the scikit-image wheel, each with a caption written here (what the
picture shows, in a few phrasings, so that several ways of asking find it) and its credit as scikit-image's
documentation states it; and painted storybook scenes of the storyteller's places (painted_scenes.py),
painted on first use (MODALMESH_PAINTED_SCENES=false leaves them out). Users add folders
(MODALMESH_PICTURE_FOLDERS): every PNG or JPEG at a folder's top level, captioned by the folder's
captions.json, else by a sidecar text file, else by its file name.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version as package_version
from importlib.resources import files
from pathlib import Path

import numpy as np

from services.runtime.errors import InvalidArgument
from services.vision.images import ImageLimits, decode
from services.vision import painted_scenes
from services.vision.painted_scenes import Scene, paint, recipes_digest

log = logging.getLogger(__name__)

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")
CAPTIONS_FILE = "captions.json"


@dataclass(frozen=True)
class Picture:
    picture_id: str                # "skimage:rocket", "painted:harbour-night", "<folder name>:<file name>"
    caption: str                   # what responses show
    phrasings: tuple[str, ...]     # the caption and other ways to say it: all embedded for retrieval
    credit: str
    path: Path | None              # the picture's file; None for a painted scene
    size_bytes: int                # the file's size; 0 for a painted scene
    scene: Scene | None = None     # a painted scene: painted when first used

    def pixels(self, limits: ImageLimits) -> np.ndarray:
        """RGB uint8 [H, W, 3]; the last few pictures used stay decoded (or painted)."""
        return paint(self.scene) if self.scene else _decoded(self.path, limits)


@dataclass(frozen=True)
class BuiltIn:
    name: str
    file: str
    phrasings: tuple[str, ...]
    credit: str


_SKIMAGE = "scikit-image sample data"
BUILT_INS = (
    BuiltIn("astronaut", "astronaut.png", (
        "Portrait of the astronaut Eileen Collins in an orange flight suit, beside an American flag and a model "
        "of the space shuttle",
        "an astronaut in a spacesuit holding a helmet", "a smiling woman, a space shuttle pilot",
        "a portrait of a person in uniform"),
        "NASA Great Images database; no known copyright restrictions, public domain"),
    BuiltIn("rocket", "rocket.jpg", (
        "A Falcon 9 rocket standing on its launch pad at dusk, lit by floodlights between lightning towers",
        "a rocket ready for lift-off", "a spaceship launch at night", "a space launch site with towers"),
        "SpaceX, launch of DSCOVR at Cape Canaveral; released into the public domain"),
    BuiltIn("coffee", "coffee.png", (
        "A cup of espresso coffee on a red saucer with a spoon, on a wooden table",
        "a cup of coffee", "a hot drink in a cafe", "breakfast on a wooden table"),
        "Rachel Michetti, courtesy of Pikolo Espresso Bar; CC0"),
    BuiltIn("chelsea", "chelsea.png", (
        "Chelsea the tabby cat: a close-up of a cat's face with green eyes and whiskers",
        "a cat", "a kitten looking at the camera", "a pet with fur and whiskers"),
        "Stefan van der Walt; CC0"),
    BuiltIn("camera", "camera.png", (
        "A black and white photograph of a man filming with a camera on a tripod in a park",
        "a photographer at work", "a cameraman outdoors on a lawn", "a man looking through a camera"),
        "Lav Varshney; CC0"),
    BuiltIn("clock", "clock_motion.png", (
        "A round wall clock, blurred by the camera's motion",
        "a clock on a wall", "time passing quickly", "a blurry clock face"),
        "Stefan van der Walt; public domain"),
    BuiltIn("coins", "coins.png", (
        "Ancient Greek coins from Pompeii laid out in rows, black and white",
        "old coins and money", "a treasure of silver coins", "an archaeological collection"),
        "Brooklyn Museum Collection; no known copyright restrictions"),
    BuiltIn("horse", "horse.png", (
        "A black silhouette of a standing horse on a white background",
        "a horse", "a pony on a farm", "the outline of an animal"),
        "Andreas Preuss (marauder), openclipart; CC0"),
    BuiltIn("motorcycle", "motorcycle_left.png", (
        "A red motorcycle parked in a cluttered garage workshop",
        "a motorbike", "a vehicle in a garage", "a bike in a workshop with shelves and boxes"),
        "Middlebury 2014 stereo dataset (D. Scharstein et al.), as shipped by scikit-image"),
    BuiltIn("hubble_deep_field", "hubble_deep_field.jpg", (
        "The Hubble eXtreme Deep Field: thousands of distant galaxies in the dark of space",
        "stars and galaxies in the night sky", "deep space, the universe", "a starry sky"),
        "NASA, HubbleSite; public domain"),
    BuiltIn("moon", "moon.png", (
        "The grey, cratered surface of the moon",
        "the moon", "a lunar landscape with craters", "a barren grey desert of rock"),
        f"{_SKIMAGE} (its documentation names no source or licence)"),
    BuiltIn("grass", "grass.png", (
        "A close-up of blades of grass, black and white",
        "grass in a meadow", "a lawn", "a field of grass"),
        "linolafett, DeviantArt; CC0"),
    BuiltIn("gravel", "gravel.png", (
        "Grey gravel: small stones on the ground, seen from above",
        "pebbles", "a gravel path", "stones and rocks"),
        "CC0Textures (Gravel04); CC0"),
    BuiltIn("brick", "brick.png", (
        "A grey brick wall",
        "bricks", "the wall of a building", "a brick facade"),
        "CC0Textures (Bricks25); CC0"),
    BuiltIn("page", "page.png", (
        "A scanned page of printed text about image segmentation",
        "a page of a book", "a printed document", "reading text on paper"),
        f"{_SKIMAGE} (its documentation names no source or licence)"),
    BuiltIn("text", "text.png", (
        "Handwritten mathematical formulas on lined paper, seen at an angle",
        "handwriting", "equations written in pen", "maths homework in a notebook"),
        "Wikipedia (File:Corner.png); no known copyright restrictions, public domain"),
    BuiltIn("retina", "retina.jpg", (
        "A fundus photograph of a healthy human retina: orange, with red blood vessels and the optic disc",
        "the back of an eye", "an eye examination", "a medical photograph of an eye"),
        "Mikael Haggstrom, Wikimedia Commons; CC0"),
    BuiltIn("immunohistochemistry", "ihc.png", (
        "Colon tissue under a microscope, stained brown and blue (immunohistochemistry)",
        "cells under a microscope", "a biology laboratory slide", "a tissue sample"),
        "Center for Microscopy and Molecular Imaging (CMMI); no known copyright restrictions"),
)


def built_in_pictures(limits: ImageLimits) -> list[Picture]:
    """The scikit-image photographs that ship in its wheel (no download), those within ``limits``."""
    folder = Path(str(files("skimage") / "data"))
    credit = f"{_SKIMAGE} {package_version('scikit-image')}"
    pictures = [Picture(f"skimage:{b.name}", b.phrasings[0], b.phrasings, f"{b.credit} ({credit}: {b.file})",
                        folder / b.file, (folder / b.file).stat().st_size) for b in BUILT_INS]
    return [p for p in pictures if _servable(p.path, limits)]


def folder_pictures(folder: Path, limits: ImageLimits) -> list[Picture]:
    """Every readable PNG or JPEG at the top of ``folder`` within ``limits``; others are skipped with a log line."""
    if not folder.is_dir():
        raise FileNotFoundError(f"picture folder {folder} does not exist (MODALMESH_PICTURE_FOLDERS)")
    captions = _captions_json(folder)
    pictures = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in PICTURE_SUFFIXES and p.is_file()):
        if not _servable(path, limits):
            continue
        caption, credit = _caption(path, captions.get(path.name))
        pictures.append(Picture(f"{folder.name}:{path.name}", caption, (caption,), credit, path,
                                path.stat().st_size))
    return pictures


def painted_pictures(limits: ImageLimits) -> list[Picture]:
    """The painted storybook scenes (captions only: each is painted when first used), if their size is
    within ``limits``."""
    width, height = painted_scenes.WIDTH, painted_scenes.HEIGHT
    if width > limits.max_side or width * height > limits.max_pixels:
        log.warning("painted scenes skipped", extra={"reason": f"{width} x {height} pixels exceed the image limits"})
        return []
    return [Picture(s.scene_id, s.caption, s.phrasings, painted_scenes.CREDIT, None, 0, s)
            for s in painted_scenes.scenes()]


def library_pictures(folders: Sequence[Path], limits: ImageLimits, painted: bool = True) -> list[Picture]:
    return (built_in_pictures(limits) + (painted_pictures(limits) if painted else [])
            + [p for folder in folders for p in folder_pictures(folder, limits)])


def library_digest(pictures: Sequence[Picture]) -> str:
    """A short hash of what the library holds (ids, phrasings, file sizes, the painting code): its version."""
    digest = hashlib.sha256()
    for picture in pictures:
        content = recipes_digest() if picture.scene else picture.size_bytes
        digest.update(json.dumps([picture.picture_id, picture.phrasings, content]).encode())
    return digest.hexdigest()[:12]


def library_sources(pictures: Sequence[Picture]) -> str:
    """Where the pictures come from, for the model's provenance."""
    built_in = sum(p.picture_id.startswith("skimage:") for p in pictures)
    painted = sum(p.scene is not None for p in pictures)
    folders = sorted({str(p.path.parent) for p in pictures if p.path and not p.picture_id.startswith("skimage:")})
    text = f"{built_in} photographs of scikit-image {package_version('scikit-image')}"
    if painted:
        text += (f", {painted} storybook scenes painted procedurally by services/vision/painted_scenes.py "
                 f"(version {recipes_digest()})")
    added = len(pictures) - built_in - painted
    return text + (f" and {added} pictures from {', '.join(folders)}" if folders else "")


# -- reading --------------------------------------------------------------------------------------

def _captions_json(folder: Path) -> dict[str, object]:
    """{"file.jpg": "caption"} or {"file.jpg": {"caption": ..., "credit": ...}}; a broken file stops loading."""
    path = folder / CAPTIONS_FILE
    if not path.exists():
        return {}
    try:
        captions = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(captions, dict):
        raise ValueError(f"{path} must map file names to captions")
    return captions


def _caption(path: Path, entry: object) -> tuple[str, str]:
    """(caption, credit) from a captions.json entry, else a sidecar .txt, else the file name."""
    credit = f"local picture {path}"
    if isinstance(entry, dict):
        caption, credit = str(entry.get("caption", "")).strip(), str(entry.get("credit", credit))
    else:
        caption = str(entry or "").strip()
    if not caption:
        caption = _sidecar_caption(path)
    return caption or _file_name_caption(path), credit


def _sidecar_caption(path: Path) -> str:
    for sidecar in (path.with_suffix(".txt"), path.with_name(path.name + ".txt")):
        if sidecar.is_file():
            return sidecar.read_text(encoding="utf-8", errors="replace").strip()
    return ""


def _file_name_caption(path: Path) -> str:
    """"red_barn-at-dusk.jpg" -> "red barn at dusk"."""
    return re.sub(r"[\s_\-.]+", " ", path.stem).strip()


def _servable(path: Path, limits: ImageLimits) -> bool:
    problem = _unreadable(path, limits)
    if problem:
        log.warning("picture skipped", extra={"path": str(path), "reason": problem})
    return not problem


def _unreadable(path: Path, limits: ImageLimits) -> str:
    """Why the picture cannot be served, or "" when it can. Checked once at load: decoding verifies it whole."""
    size = path.stat().st_size
    if size > 8 * limits.max_pixels:   # larger than any 8-bit picture within the pixel limit needs
        return f"{size} bytes is more than a picture within the limit of {limits.max_pixels} pixels needs"
    try:
        decode(path.read_bytes(), limits, str(path))
    except InvalidArgument as error:
        return error.message
    except OSError as error:
        return f"{type(error).__name__}: {error}"
    return ""


@functools.lru_cache(maxsize=16)
def _decoded(path: Path, limits: ImageLimits) -> np.ndarray:
    pixels = decode(path.read_bytes(), limits, str(path))
    pixels.flags.writeable = False   # shared by every request that uses it
    return pixels
