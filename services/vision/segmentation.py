"""3D segmentation of studies: the model adapter, sliding windows through the batcher, labels and measurements.

A study is prepared as the network was trained (services/vision/volume_model.py: reorientation, resampling,
intensity window), then ``monai.inferers.sliding_window_inference`` cuts the prepared volume into windows.
Its predictor does not run the network itself: it hands each group of windows to the served model's dynamic
batcher, so windows of concurrent studies share one network execution. The blended class probabilities are
reduced to labels on the prepared grid, mapped back to the study's own grid (nearest voxel, through the two
affines) and measured there.

Models: a folder written by scripts/train_segmentation_model.py (model.safetensors + provenance.json; the
packaged ``abdomen-phantom`` is one), or a MONAI bundle folder (services/vision/monai_bundle.py), either by
path or by Hugging Face id from the local cache (the Model Zoo publishes its bundles as MONAI/<name>).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.data.utils import dense_patch_slices
from monai.inferers import sliding_window_inference
from monai.inferers.utils import _get_scan_interval
from monai.transforms import Compose

from services.runtime.adapter import ModelAdapter, ModelDescription, TensorSpec
from services.runtime.devices import configure_threads, pick_device, pick_dtype
from services.runtime.errors import InvalidArgument, ResourceExhausted
from services.runtime.progress import WorkerProgress
from services.runtime.served_model import ServedModel
from services.vision.monai_bundle import is_bundle, read_bundle
from services.vision.volume_model import SegmentationSpec, as_meta_tensor, build_network, preparation
from services.vision.volumes import Volume

ABDOMEN_PHANTOM = "abdomen-phantom"
MODELS_DIR = Path(__file__).resolve().parent / "models"
WEIGHTS_FILE = "model.safetensors"
PROVENANCE_FILE = "provenance.json"
# Windows a study hands to the batcher at once when the model does not say (a bundle's sw_batch_size does).
WINDOWS_PER_REQUEST = 4
# How often a waiting study checks whether its caller went away.
CANCEL_POLL_S = 0.1


@dataclass(frozen=True)
class SegmentationPlan:
    """What a loaded model needs from a study: its preparation, windows, and label names."""

    spec: SegmentationSpec             # labels, roi_size and overlap are read from it
    prepare: Compose                   # channel-first MetaTensor → the network's grid and intensity scale
    windows_per_request: int
    blend_mode: str = "gaussian"       # how overlapping windows are weighted: "gaussian" or "constant"


class VolumeSegmentationModel(ModelAdapter):
    """Rows: prepared windows, float32 [1, *roi_size], from one or several studies.
    Results: class probabilities per window, float16 [classes, *roi_size] (half the memory of queued results)."""

    # Open Inference Protocol view: prepared windows in, class probabilities out (the network alone).
    inputs = (TensorSpec("WINDOW", "FP32", (1, -1, -1, -1)),)
    outputs = (TensorSpec("PROBABILITIES", "FP16", (-1, -1, -1, -1)),)

    def __init__(self, path: Path | str = MODELS_DIR / ABDOMEN_PHANTOM, device: str = "auto",
                 precision: str = "auto", threads: int = 0, instances: int = 1):
        self.path = Path(path)
        self.device = pick_device(device)
        self.precision = precision
        self.threads = threads
        self.instances = instances
        self.network: torch.nn.Module | None = None
        self.plan: SegmentationPlan | None = None
        self._autocast: torch.dtype | None = None
        self._description: ModelDescription | None = None

    def load(self) -> None:
        configure_threads(self.threads, self.instances)
        self.path = model_folder(self.path)
        if is_bundle(self.path):
            bundle = read_bundle(self.path, self.device)
            self.network, description = bundle.network, bundle.description
            self.plan = SegmentationPlan(bundle.spec, bundle.preparation, bundle.sw_batch_size, bundle.blend_mode)
        else:
            self.network, description, spec = _read_trained(self.path, self.device)
            self.plan = SegmentationPlan(spec, preparation(spec), WINDOWS_PER_REQUEST)
        self.network.to(self.device).eval()
        # Mixed precision on a GPU: convolutions in bfloat16 (or float16), blending and argmax in float32.
        dtype = pick_dtype(self.device, self.precision)
        self._autocast = dtype if self.device.type == "cuda" and dtype != torch.float32 else None
        self._description = ModelDescription(
            name=description["name"], version=description["version"], provenance=description["provenance"],
            device=str(self.device),
            dtype=f"{str(dtype).removeprefix('torch.')} autocast" if self._autocast else "float32")

    def warm_up(self) -> None:
        self.run_batch([torch.zeros((1, *self.plan.spec.roi_size)) for _ in range(2)])

    def describe(self) -> ModelDescription:
        return self._description

    def close(self) -> None:
        self.network = None

    def rows_from_tensors(self, tensors: dict[str, np.ndarray]) -> list[torch.Tensor]:
        windows = tensors["WINDOW"]
        if tuple(windows.shape[1:]) != (1, *self.plan.spec.roi_size):
            raise InvalidArgument(("WINDOW", f"shape {list(windows.shape)}: windows of this model are "
                                             f"[batch, 1, {', '.join(map(str, self.plan.spec.roi_size))}], prepared "
                                             "as its spec says"))
        return list(torch.from_numpy(np.array(windows, np.float32)))

    def tensors_from_results(self, results: Sequence[torch.Tensor]) -> dict[str, np.ndarray]:
        return {"PROBABILITIES": torch.stack(list(results)).numpy()}

    @torch.inference_mode()
    def run_batch(self, rows: Sequence[torch.Tensor]) -> torch.Tensor:
        x = torch.stack(list(rows)).to(self.device, non_blocking=True)
        with torch.autocast("cuda", dtype=self._autocast) if self._autocast else contextlib.nullcontext():
            logits = self.network(x)
        return torch.softmax(logits.float(), dim=1).to(torch.float16).cpu()


def model_folder(source: Path) -> Path:
    """A folder as it is, or a Hugging Face id's snapshot in the local cache (never downloaded here)."""
    if source.is_dir():
        return source
    if len(source.parts) == 2 and not source.is_absolute():
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(source), local_files_only=True))
    raise FileNotFoundError(f"segmentation model {source}: no such folder, and not a Hugging Face id (org/name)")


def _read_trained(path: Path, device: torch.device) -> tuple[torch.nn.Module, dict, SegmentationSpec]:
    """A folder written by scripts/train_segmentation_model.py: the network, its description and spec."""
    from safetensors.torch import load_file

    provenance = json.loads((path / PROVENANCE_FILE).read_text())
    spec = SegmentationSpec.from_json(provenance["spec"])
    weights = path / WEIGHTS_FILE
    network = build_network(spec)
    network.load_state_dict(load_file(str(weights), device=str(device)))
    version = provenance.get("version") or hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    return network, {"name": provenance.get("name", path.name), "version": str(version),
                     "provenance": f"{provenance.get('provenance', f'weights from {path}')}; "
                                   f"held-out Dice {_heldout_dice(provenance)}"}, spec


def _heldout_dice(provenance: dict) -> str:
    """"organ 0.97, lesion 0.93" from what the training script recorded."""
    dice = provenance.get("heldout", {}).get("dice", {})
    if not isinstance(dice, dict) or not dice:
        return "not recorded"
    return ", ".join(f"{name} {value:.3f}" for name, value in dice.items() if isinstance(value, (int, float)))


# -- one study ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Structure:
    """One labelled structure measured on the study's own grid."""

    label: int
    name: str
    voxel_count: int
    volume_ml: float
    box_min: tuple[int, int, int] | None     # inclusive voxel indices; None when the structure is absent
    box_max: tuple[int, int, int] | None
    centroid_mm: tuple[float, float, float] | None   # RAS+ millimetres


@dataclass(frozen=True)
class SegmentedStudy:
    labels: np.ndarray             # uint8, the study's shape, voxel order and affine
    structures: list[Structure]


@dataclass(frozen=True)
class Progress:
    stage: str            # "segmenting" or "measuring"
    windows_done: int
    windows_total: int


class StudyCancelled(Exception):
    """The caller went away: the study's windows stop going to the batcher."""


class StudySegmenter:
    """Runs studies through one served segmentation model; the CPU work of each runs off the event loop."""

    def __init__(self, served: ServedModel, adapter: VolumeSegmentationModel):
        self.served = served
        self.adapter = adapter

    @property
    def plan(self) -> SegmentationPlan:
        return self.adapter.plan

    @property
    def windows_per_request(self) -> int:
        """The model's windows at a time, within the batcher's max batch size."""
        return min(self.plan.windows_per_request, self.served.max_batch_size)

    def segment(self, volume: Volume, context) -> AsyncIterator[Progress | SegmentedStudy]:
        """Progress ("segmenting" as windows return, then "measuring") while ``volume`` is segmented on a
        worker thread, then its SegmentedStudy. Leaving early (the caller cancelled) stops the thread's windows."""
        self.served.require_ready()
        loop = asyncio.get_running_loop()
        progress = WorkerProgress(Progress)

        def submit(windows: list[torch.Tensor]) -> concurrent.futures.Future:
            return asyncio.run_coroutine_threadsafe(self.served.infer(windows, context), loop)

        # The thread stops before its next group of windows once the caller has gone.
        return progress.stream(asyncio.ensure_future(asyncio.to_thread(
            segment_volume, volume, self.plan, self.windows_per_request, submit, progress.report,
            progress.cancelled)))


def segment_volume(volume: Volume, plan: SegmentationPlan, windows_per_request: int,
                   submit: Callable[[list[torch.Tensor]], concurrent.futures.Future],
                   report: Callable[[str, int, int], None] = lambda *_: None,
                   cancelled: threading.Event | None = None) -> SegmentedStudy:
    """The whole pipeline of one study on the calling thread; ``submit`` runs groups of windows (through the
    batcher in the service, directly in bench/segment_volume.py's raw phase)."""
    prepared = plan.prepare(as_meta_tensor(volume.voxels, volume.affine))
    total = count_windows(prepared.shape[1:], plan.spec.roi_size, plan.spec.overlap)
    predictor = WindowPredictor(submit, lambda done: report("segmenting", done, total),
                                cancelled or threading.Event())
    report("segmenting", 0, total)
    with torch.inference_mode():
        probabilities = sliding_window_inference(
            prepared[None].as_tensor(), plan.spec.roi_size, windows_per_request, predictor,
            overlap=plan.spec.overlap, mode=plan.blend_mode)
        grid_labels = probabilities[0].argmax(0).to(torch.uint8).numpy()
    del probabilities
    report("measuring", predictor.done, total)
    labels = to_study_grid(grid_labels, np.asarray(prepared.affine, np.float64), volume.voxels.shape, volume.affine)
    return SegmentedStudy(labels, measure(labels, volume.affine, plan.spec.labels))


class WindowPredictor:
    """sliding_window_inference's predictor: windows go to the batcher, probabilities come back (worker thread)."""

    def __init__(self, submit: Callable[[list[torch.Tensor]], concurrent.futures.Future],
                 on_windows: Callable[[int], None], cancelled: threading.Event):
        self.submit = submit
        self.on_windows = on_windows
        self.cancelled = cancelled
        self.done = 0

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        if self.cancelled.is_set():
            raise StudyCancelled()
        future = self.submit(list(windows.float().contiguous()))
        while True:
            try:
                result = future.result(timeout=CANCEL_POLL_S)
                break
            except concurrent.futures.TimeoutError:
                if self.cancelled.is_set():
                    future.cancel()   # leaves the batcher's queue if it has not run yet
                    raise StudyCancelled() from None
        self.done += len(windows)
        self.on_windows(self.done)
        return result.float()


def count_windows(shape: Sequence[int], roi_size: Sequence[int], overlap: float) -> int:
    """Windows sliding_window_inference cuts from a prepared volume (it pads a side shorter than the window)."""
    size = tuple(max(int(s), int(r)) for s, r in zip(shape, roi_size))
    interval = _get_scan_interval(size, tuple(roi_size), len(size), (overlap,) * len(size))
    return len(dense_patch_slices(size, tuple(roi_size), interval))


def to_study_grid(grid_labels: np.ndarray, grid_affine: np.ndarray, study_shape: Sequence[int],
                  study_affine: np.ndarray) -> np.ndarray:
    """Labels of the prepared grid → the study's grid, nearest voxel.

    Reorientation and resampling change only the axes' order, direction and spacing, so each study axis maps
    to one grid axis: the study's labels are one gather along three index vectors (no dense coordinate grid,
    which for a 512 x 512 x 300 study would take gigabytes).
    """
    mapping = np.linalg.solve(grid_affine, study_affine)   # study voxel → grid voxel
    rotation = mapping[:3, :3]
    grid_axis = np.abs(rotation).argmax(axis=0)            # the grid axis each study axis runs along
    off_axis = np.abs(rotation).sum(axis=0) - np.abs(rotation[grid_axis, range(3)])
    if sorted(grid_axis) != [0, 1, 2] or off_axis.max() > 1e-3 * np.abs(rotation).max():
        raise RuntimeError("the prepared grid is not axis-aligned with the study's grid")
    indices = []
    for axis in range(3):
        g = grid_axis[axis]
        positions = rotation[g, axis] * np.arange(study_shape[axis]) + mapping[g, 3]
        indices.append(np.clip(np.rint(positions).astype(np.int64), 0, grid_labels.shape[g] - 1))
    # Gather with the grid's axes in study order, so the result is indexed [i, j, k] of the study.
    order = list(grid_axis)
    return np.ascontiguousarray(grid_labels.transpose(order)[np.ix_(*indices)])


def measure(labels: np.ndarray, affine: np.ndarray, names: dict[int, str]) -> list[Structure]:
    """Voxel count, volume, inclusive bounding box and centroid of every foreground label of ``names``."""
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    counts = np.bincount(labels.reshape(-1), minlength=max(names) + 1)
    out = []
    for label, name in sorted(names.items()):
        if label == 0:
            continue
        count = int(counts[label]) if label < len(counts) else 0
        if count == 0:
            out.append(Structure(label, name, 0, 0.0, None, None, None))
            continue
        mask = labels == label
        box_min, box_max, centre = [], [], []
        for axis in range(3):   # the mask's profile along each axis gives its extent and mean index
            profile = mask.sum(axis=tuple(a for a in range(3) if a != axis), dtype=np.int64)
            present = np.flatnonzero(profile)
            box_min.append(int(present[0]))
            box_max.append(int(present[-1]))
            centre.append(float(profile @ np.arange(len(profile))) / count)
        centroid = affine @ np.array([*centre, 1.0])
        out.append(Structure(label, name, count, count * voxel_ml, tuple(box_min), tuple(box_max),
                             tuple(float(c) for c in centroid[:3])))
    return out


class StudyAdmission:
    """At most ``active`` studies in work at once, at most ``waiting`` more queued; past that
    RESOURCE_EXHAUSTED at once. A study's bytes are received only once it is admitted, so memory stays bounded."""

    def __init__(self, active: int, waiting: int):
        self.active = active
        self.waiting = waiting
        self._slots: asyncio.Semaphore | None = None
        self._queued = 0

    @contextlib.asynccontextmanager
    async def slot(self):
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.active)
        if self._slots.locked() and self._queued >= self.waiting:
            raise ResourceExhausted(f"{self.active} studies are being segmented and {self._queued} are waiting "
                                    "(MODALMESH_MAX_CONCURRENT_STUDIES, MODALMESH_MAX_QUEUED_STUDIES); "
                                    "retry with backoff")
        self._queued += 1
        try:
            await self._slots.acquire()
        finally:
            self._queued -= 1
        try:
            yield
        finally:
            self._slots.release()

