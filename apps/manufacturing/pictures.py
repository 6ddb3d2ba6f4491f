"""Images for people, rendered on the server: inspection photos with their defects drawn over them,
and acoustic spectrograms. Also the latest of each per asset, kept apart from the twin state."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from apps.twins import reading

INSPECTION_IMAGE, SPECTROGRAM_IMAGE = "inspection", "spectrogram"
# One colour per defect class, BGR; classes not listed get white.
DEFECT_COLOURS = {"scratch": (0, 215, 255), "spot": (255, 128, 0), "crack": (40, 40, 230)}

metadata = sa.MetaData()

latest_images = sa.Table(
    "latest_images", metadata,
    sa.Column("asset_id", sa.String(128), primary_key=True),
    sa.Column("kind", sa.String(32), primary_key=True),
    sa.Column("timestamp_ms", sa.BigInteger, nullable=False),
    sa.Column("png", sa.LargeBinary, nullable=False),
)


@dataclass(frozen=True)
class BoxedDefect:
    label: str
    score: float
    box: tuple[int, int, int, int]   # x, y, width, height in pixels


def inspection_overlay(image_bytes: bytes, defects: list[BoxedDefect], mask: np.ndarray | None) -> bytes:
    """The photo with the defect mask tinted red and a labelled box per defect, as PNG."""
    image = cv2.imdecode(np.frombuffer(image_bytes, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("not an image OpenCV can read")
    if mask is not None and mask.shape[:2] == image.shape[:2] and mask.any():
        tinted = image.copy()
        tinted[mask > 0] = (0.45 * tinted[mask > 0] + 0.55 * np.array([40, 40, 230])).astype(np.uint8)
        image = tinted
    for defect in defects:
        x, y, w, h = defect.box
        colour = DEFECT_COLOURS.get(defect.label, (255, 255, 255))
        cv2.rectangle(image, (x, y), (x + w - 1, y + h - 1), colour, 2)
        cv2.putText(image, f"{defect.label} {defect.score:.2f}", (x, max(12, y - 4)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.45, colour, 1, cv2.LINE_AA)
    return _png(image)


def spectrogram_image(log_mel: np.ndarray, scale: int = 3) -> bytes:
    """A [mel bands, frames] log-mel spectrogram as a colour image, low frequencies at the bottom."""
    if log_mel.ndim != 2 or not log_mel.size:
        raise ValueError(f"a spectrogram is [bands, frames], not {log_mel.shape}")
    values = np.nan_to_num(log_mel.astype(np.float32))
    lo, hi = np.percentile(values, 1), np.percentile(values, 99)
    grey = np.clip((values - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)[::-1]
    coloured = cv2.applyColorMap(grey, cv2.COLORMAP_INFERNO)
    return _png(cv2.resize(coloured, (grey.shape[1] * scale, grey.shape[0] * scale),
                           interpolation=cv2.INTER_NEAREST))


def _png(image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return encoded.tobytes()


class LatestImages:
    def __init__(self, engine: Engine):
        self.engine = engine

    def create_schema(self) -> None:
        metadata.create_all(self.engine)

    def put(self, asset_id: str, kind: str, timestamp_ms: int, png: bytes) -> None:
        key = (latest_images.c.asset_id == asset_id) & (latest_images.c.kind == kind)
        with self.engine.begin() as conn:   # replace, in one transaction (portable upsert)
            conn.execute(latest_images.delete().where(key))
            conn.execute(latest_images.insert().values(asset_id=asset_id, kind=kind, timestamp_ms=timestamp_ms,
                                                       png=png))

    def get(self, asset_id: str, kind: str) -> bytes | None:
        with reading(self.engine) as conn:
            return conn.execute(sa.select(latest_images.c.png).where(
                latest_images.c.asset_id == asset_id, latest_images.c.kind == kind)).scalar_one_or_none()
