"""Image generation: a picture for a text prompt, from one of two kinds of model.

- PictureLibraryModel ("picture-library", the default): retrieval, not generation. The prompt and the
  captions of a library of real pictures are embedded with the packaged MiniLM sentence encoder; the
  best-matching picture (the seed picks among near-ties) is framed to the requested size around its centre
  of interest and given a style with OpenCV.
- DiffusionModel: any diffusers text-to-image pipeline, by local path or by Hugging Face id in the local
  cache, e.g. a one-step turbo model on a GPU.

Both take GenerationRows through the dynamic batcher, so the prompts of concurrent requests are embedded
(or denoised) together. Each row carries a thread-safe progress callback and a cancelled flag;
ImageGenerator turns them into the stream of progress events that GenerateImage sends.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import threading
from abc import abstractmethod
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch

from services.runtime.adapter import ModelAdapter, ModelDescription
from services.runtime.devices import configure_threads, pick_device, pick_dtype
from services.runtime.errors import FailedPrecondition
from services.runtime.pretrained import local_source, quiet_transformers
from services.runtime.progress import WorkerProgress
from services.runtime.served_model import ServedModel
from services.text.embedding_model import PACKAGED_NAME, SentenceEmbedder
from services.vision.images import ImageLimits
from services.vision.picture_library import Picture, library_digest, library_pictures, library_sources
from services.vision.picture_styles import STYLE_PROMPTS, apply_style

log = logging.getLogger(__name__)

PICTURE_LIBRARY = "picture-library"
LIBRARY_SIZE = 512          # a side, when a request leaves the size to the model
LIBRARY_STAGES = ("matching", "framing", "styling")
NEAR_TIE = 0.02             # pictures this close to the best similarity are equally good matches
EMBEDDING_CHUNK = 64        # captions embedded per encoder call at load


@dataclass(frozen=True)
class ImageSpec:
    """What a request asks for, validated; 0 / None mean the model's default until resolve() fills them."""

    prompt: str
    negative_prompt: str = ""
    width: int = 0
    height: int = 0
    steps: int = 0
    guidance: float | None = None
    seed: int = 0
    style: str = ""


def _no_report(stage: str, step: int, total: int) -> None:
    pass


def _never() -> bool:
    return False


@dataclass(frozen=True)
class GenerationRow:
    """One row for the batcher: the spec, where progress goes (called from the model thread) and whether
    its caller has gone."""

    spec: ImageSpec
    report: Callable[[str, int, int], None] = _no_report
    cancelled: Callable[[], bool] = _never


@dataclass(frozen=True)
class PictureMatch:
    picture: Picture
    similarity: float


@dataclass(frozen=True)
class GeneratedPicture:
    pixels: np.ndarray                  # RGB uint8 [height, width, 3]
    steps: int
    match: PictureMatch | None = None   # set by the picture library


@dataclass(frozen=True)
class Progress:
    stage: str
    step: int
    total: int


class ImageModel(ModelAdapter):
    """A model GenerateImage can serve: it fills a spec's defaults, and its run_batch takes GenerationRows
    and returns a GeneratedPicture per row (None for a row cancelled meanwhile)."""

    @abstractmethod
    def resolve(self, spec: ImageSpec) -> ImageSpec: ...

    def rows_from_tensors(self, tensors: dict[str, np.ndarray]) -> list[GenerationRow]:
        """A prompt, options and a picture are no tensors: the Open Inference Protocol lists the model, and
        ModelInfer says where to ask instead of failing as an internal error."""
        raise FailedPrecondition(f"{type(self).__name__} takes no tensors: call "
                                 "modalmesh.v1.VisionService/GenerateImage")


class ImageGenerator:
    """The served image model as GenerateImage uses it: one request in, progress and a picture out."""

    def __init__(self, served: ServedModel):
        self.served = served
        self.model: ImageModel = served.adapter

    def generate(self, spec: ImageSpec, context) -> AsyncIterator[Progress | GeneratedPicture]:
        """Progress while ``spec`` waits and runs, then its GeneratedPicture. Leaving early (the caller
        cancelled, or its deadline passed) tells the model to stop."""
        self.served.require_ready()
        spec = self.model.resolve(spec)
        progress = WorkerProgress(Progress)
        progress.report("queued", 0, spec.steps)
        row = GenerationRow(spec, progress.report, progress.cancelled.is_set)
        return progress.stream(asyncio.ensure_future(self._one(row, context)))

    async def _one(self, row: GenerationRow, context) -> GeneratedPicture:
        [picture] = await self.served.infer([row], context)
        return picture


# -- the picture library ----------------------------------------------------------------------------

class PictureLibraryModel(ImageModel):
    def __init__(self, folders: Sequence[Path] = (), limits: ImageLimits = ImageLimits(), device: str = "auto",
                 threads: int = 0, instances: int = 1, embedding_model: str = PACKAGED_NAME,
                 painted_scenes: bool = True):
        self.folders = tuple(Path(f) for f in folders)
        self.limits = limits
        self.painted_scenes = painted_scenes
        self.embedder = SentenceEmbedder(embedding_model, device=device, threads=threads, instances=instances)
        self.pictures: list[Picture] = []
        self.phrasing_vectors = np.zeros((0, 0), np.float32)
        self.picture_starts = np.zeros(0, np.int64)   # index of each picture's first phrasing
        self._description: ModelDescription | None = None

    def load(self) -> None:
        self.embedder.load()
        self.pictures = library_pictures(self.folders, self.limits, self.painted_scenes)
        if not self.pictures:
            raise RuntimeError("the picture library is empty: every picture was skipped (see the log)")
        phrasings = [text for p in self.pictures for text in p.phrasings]
        self.picture_starts = np.cumsum([0] + [len(p.phrasings) for p in self.pictures[:-1]])
        distinct, where = np.unique(phrasings, return_inverse=True)   # painted scenes share theirs between lights
        distinct = distinct.tolist()
        self.phrasing_vectors = np.concatenate([self._embed(distinct[i:i + EMBEDDING_CHUNK])
                                                for i in range(0, len(distinct), EMBEDDING_CHUNK)])[where]
        encoder = self.embedder.describe()
        self._description = ModelDescription(
            name=PICTURE_LIBRARY, version=library_digest(self.pictures),
            provenance=(f"retrieval, not generation: {library_sources(self.pictures)}, chosen by caption "
                        f"similarity with {encoder.name} ({encoder.provenance}), framed and styled with OpenCV "
                        f"{cv2.__version__}"),
            device=encoder.device, dtype="uint8")
        log.info("picture library loaded", extra={"pictures": len(self.pictures), "phrasings": len(phrasings)})

    def warm_up(self) -> None:
        self.run_batch([GenerationRow(ImageSpec("a picture to warm up with", width=64, height=64))])

    def describe(self) -> ModelDescription:
        return self._description

    def close(self) -> None:
        self.embedder.close()

    def resolve(self, spec: ImageSpec) -> ImageSpec:
        return replace(spec, width=spec.width or LIBRARY_SIZE, height=spec.height or LIBRARY_SIZE,
                       steps=len(LIBRARY_STAGES), guidance=None)

    def run_batch(self, rows: Sequence[GenerationRow]) -> list[GeneratedPicture | None]:
        """Every live row's prompt embedded in one encoder call; then each row matched, framed and styled."""
        live = [i for i, row in enumerate(rows) if not row.cancelled()]
        results: list[GeneratedPicture | None] = [None] * len(rows)
        if not live:
            return results
        for i in live:
            rows[i].report("matching", 0, len(LIBRARY_STAGES))
        similarities = self.similarities([rows[i].spec.prompt for i in live])
        for i, row_similarities in zip(live, similarities):
            results[i] = self._picture(rows[i], self.choose(row_similarities, rows[i].spec.seed))
        return results

    def similarities(self, prompts: Sequence[str]) -> np.ndarray:
        """[prompts, pictures]: cosine similarity of each prompt with each picture's best-matching phrasing."""
        per_phrasing = self._embed(prompts) @ self.phrasing_vectors.T
        return np.maximum.reduceat(per_phrasing, self.picture_starts, axis=1)

    def choose(self, similarities: np.ndarray, seed: int) -> PictureMatch:
        """The best match; among pictures within NEAR_TIE of it, the seed decides."""
        near = np.flatnonzero(similarities >= similarities.max() - NEAR_TIE)
        chosen = int(np.random.default_rng([seed, 0]).choice(near))
        return PictureMatch(self.pictures[chosen], float(similarities[chosen]))

    def _picture(self, row: GenerationRow, match: PictureMatch) -> GeneratedPicture | None:
        spec, total = row.spec, len(LIBRARY_STAGES)
        row.report("framing", 1, total)
        source = match.picture.pixels(self.limits)
        framed = frame(source, spec.width, spec.height, centre_of_interest(source),
                       np.random.default_rng([spec.seed, 1]))
        if row.cancelled():
            return None
        row.report("styling", 2, total)
        return GeneratedPicture(apply_style(framed, spec.style, spec.seed), total, match)

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.embedder.run_batch(self.embedder.tokenize(texts))


def centre_of_interest(picture: np.ndarray) -> tuple[float, float]:
    """(x, y) as fractions of the width and height: the centre of the most salient tenth of the picture by
    spectral residual saliency (Hou and Zhang, 2007), pulled towards the middle since saliency is a hint."""
    side = 64
    grey = cv2.resize(cv2.cvtColor(picture, cv2.COLOR_RGB2GRAY), (side, side),
                      interpolation=cv2.INTER_AREA).astype(np.float32)
    spectrum = np.fft.fft2(grey)
    log_amplitude = np.log(np.abs(spectrum) + 1e-6).astype(np.float32)
    residual = log_amplitude - cv2.blur(log_amplitude, (3, 3))
    saliency = np.abs(np.fft.ifft2(np.exp(residual + 1j * np.angle(spectrum)))) ** 2
    saliency = cv2.GaussianBlur(saliency.astype(np.float32), (0, 0), 3)
    weights = np.where(saliency >= np.quantile(saliency, 0.9), saliency, 0)
    ys, xs = np.mgrid[0:side, 0:side] / (side - 1)
    x, y = (weights * xs).sum() / weights.sum(), (weights * ys).sum() / weights.sum()
    return 0.5 + 0.6 * (x - 0.5), 0.5 + 0.6 * (y - 0.5)


def frame(picture: np.ndarray, width: int, height: int, focus: tuple[float, float],
          rng: np.random.Generator) -> np.ndarray:
    """Cover-crop ``picture`` to width x height: scaled to fill, zoomed in a little and shifted around
    ``focus`` as the generator says (so seeds vary the framing), kept inside the picture."""
    source_height, source_width = picture.shape[:2]
    scale = max(width / source_width, height / source_height) * rng.uniform(1.0, 1.12)
    crop_width = min(source_width, max(1, round(width / scale)))
    crop_height = min(source_height, max(1, round(height / scale)))
    centre_x = (focus[0] + rng.uniform(-0.04, 0.04)) * source_width
    centre_y = (focus[1] + rng.uniform(-0.04, 0.04)) * source_height
    left = int(np.clip(round(centre_x - crop_width / 2), 0, source_width - crop_width))
    top = int(np.clip(round(centre_y - crop_height / 2), 0, source_height - crop_height))
    crop = picture[top:top + crop_height, left:left + crop_width]
    shrinking = crop_width >= width
    return cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)


# -- diffusion pipelines -----------------------------------------------------------------------------

class DiffusionModel(ImageModel):
    """A diffusers text-to-image pipeline (AutoPipelineForText2Image), loaded from local files only."""

    def __init__(self, source: str, device: str = "auto", precision: str = "auto", threads: int = 0,
                 instances: int = 1, steps: int = 0, guidance: float | None = None):
        self.source = source
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, precision)
        self.threads = threads
        self.instances = instances
        self.default_steps = steps
        self.default_guidance = guidance
        self.default_size = 512
        self.pipeline = None
        self._parameters: set[str] = set()
        self._lock = threading.Lock()   # a pipeline's scheduler keeps state: one call at a time
        self._description: ModelDescription | None = None

    def load(self) -> None:
        from diffusers import AutoPipelineForText2Image
        from diffusers.utils import logging as diffusers_logging

        quiet_transformers()   # the text encoder loads through transformers
        diffusers_logging.disable_progress_bar()
        configure_threads(self.threads, self.instances)
        path, provenance, version = local_source(self.source)
        self.pipeline = AutoPipelineForText2Image.from_pretrained(path, dtype=self.dtype, local_files_only=True)
        self.pipeline.to(self.device)
        self.pipeline.set_progress_bar_config(disable=True)
        self._learn_defaults()
        self._description = ModelDescription(
            name=self.source if not Path(self.source).expanduser().is_dir() else Path(self.source).name,
            version=version if version != "unknown" else pipeline_digest(Path(path)),
            provenance=f"diffusers {type(self.pipeline).__name__}: {provenance}",
            device=str(self.device), dtype=str(self.dtype).removeprefix("torch."))

    def _learn_defaults(self) -> None:
        """Size from the denoiser's sample size and the VAE's scale; steps and guidance from the settings,
        else from the pipeline's own call defaults."""
        signature = inspect.signature(self.pipeline.__call__).parameters
        self._parameters = set(signature)
        if "callback_on_step_end" not in signature:   # progress and cancellation need it
            raise ValueError(f"{type(self.pipeline).__name__} takes no callback_on_step_end: not servable here")
        denoiser = getattr(self.pipeline, "unet", None) or getattr(self.pipeline, "transformer", None)
        sample = getattr(getattr(denoiser, "config", None), "sample_size", None)
        sample = sample[0] if isinstance(sample, (list, tuple)) else sample
        if sample:
            self.default_size = int(sample) * int(getattr(self.pipeline, "vae_scale_factor", 8))
        if not self.default_steps:
            default = signature.get("num_inference_steps")
            self.default_steps = int(default.default) if default and default.default else 50
        if self.default_guidance is None and "guidance_scale" in signature:
            self.default_guidance = float(signature["guidance_scale"].default)

    def warm_up(self) -> None:
        self.run_batch([GenerationRow(self.resolve(ImageSpec("a picture to warm up with", steps=1)))])

    def describe(self) -> ModelDescription:
        return self._description

    def close(self) -> None:
        self.pipeline = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def resolve(self, spec: ImageSpec) -> ImageSpec:
        return replace(spec, width=spec.width or self.default_size, height=spec.height or self.default_size,
                       steps=spec.steps or self.default_steps,
                       guidance=spec.guidance if spec.guidance is not None else self.default_guidance)

    def run_batch(self, rows: Sequence[GenerationRow]) -> list[GeneratedPicture | None]:
        """Live rows with equal size, steps and guidance go through the pipeline in one call."""
        results: list[GeneratedPicture | None] = [None] * len(rows)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, row in enumerate(rows):
            if not row.cancelled():
                spec = row.spec
                groups[(spec.width, spec.height, spec.steps, spec.guidance)].append(i)
        for indices in groups.values():
            for i, picture in zip(indices, self._generate([rows[i] for i in indices])):
                results[i] = picture
        return results

    def _generate(self, rows: list[GenerationRow]) -> list[GeneratedPicture | None]:
        spec = rows[0].spec
        done = 0

        def on_step_end(pipeline, step: int, timestep, tensors: dict) -> dict:
            nonlocal done
            done = step + 1
            for row in rows:
                row.report("denoising" if done < spec.steps else "decoding", done, spec.steps)
            if all(row.cancelled() for row in rows):
                pipeline._interrupt = True   # diffusers' own flag: the remaining steps are skipped
            return tensors

        with self._lock, torch.inference_mode():
            output = self.pipeline(**self._call_arguments(rows), callback_on_step_end=on_step_end)
        if done < spec.steps:
            log.info("image generation interrupted", extra={"step": done, "steps": spec.steps, "rows": len(rows)})
        pixels = (np.clip(np.asarray(output.images, np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)
        return [None if row.cancelled() else GeneratedPicture(image, spec.steps) for row, image in zip(rows, pixels)]

    def _call_arguments(self, rows: list[GenerationRow]) -> dict:
        """The pipeline call for rows of one size, steps and guidance; arguments it does not take are left
        out (not every pipeline has a negative prompt or guidance)."""
        spec = rows[0].spec
        arguments = {
            "prompt": [styled_prompt(row.spec) for row in rows],
            "width": spec.width, "height": spec.height, "num_inference_steps": spec.steps,
            # One generator per row, on the CPU: the same seed gives the same starting noise on any device.
            "generator": [torch.Generator("cpu").manual_seed(row.spec.seed) for row in rows],
            "output_type": "np",
        }
        if spec.guidance is not None:
            arguments["guidance_scale"] = spec.guidance
        if any(row.spec.negative_prompt for row in rows):
            arguments["negative_prompt"] = [row.spec.negative_prompt for row in rows]
        return {name: value for name, value in arguments.items() if name in self._parameters}


def styled_prompt(spec: ImageSpec) -> str:
    """A diffusion model is told the style in words."""
    return f"{spec.prompt}, {STYLE_PROMPTS[spec.style]}" if spec.style else spec.prompt


def pipeline_digest(path: Path) -> str:
    """A short content hash of a diffusers folder: its model index and the start and size of each weights file."""
    digest = hashlib.sha256()
    index = path / "model_index.json"
    if index.exists():
        digest.update(index.read_bytes())
    for weights in sorted(path.glob("*/*.safetensors")) + sorted(path.glob("*/*.bin")):
        with open(weights, "rb") as f:
            digest.update(f.read(1 << 20))
        digest.update(f"{weights.relative_to(path)}:{weights.stat().st_size}".encode())
    return digest.hexdigest()[:12]
