"""A patient's studies on disk: the image and its labels as NIfTI-gz files under the data dir.

A file is written to a temporary name, flushed to disk, renamed into place, and its folder flushed:
it is either whole or absent after a crash. Files are written before the twin lists the study, so a
study the twin lists always has its files; a crash between the two leaves files no twin lists, which
``remove_unlisted`` clears at the next start.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
from pathlib import Path

IMAGE, LABELS = "image", "labels"
PATIENT_ID = re.compile(r"PT-[0-9A-F]{6}")
STUDY_ID = re.compile(r"S-[0-9a-f]{8}")
COPY_CHUNK = 1 << 20


class StudyFiles:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, patient_id: str, study_id: str, kind: str) -> Path:
        if not (PATIENT_ID.fullmatch(patient_id) and STUDY_ID.fullmatch(study_id)) or kind not in (IMAGE, LABELS):
            raise LookupError("no such study")
        return self.root / patient_id / study_id / f"{kind}.nii.gz"

    def exists(self, patient_id: str, study_id: str) -> bool:
        return all(self.path(patient_id, study_id, kind).is_file() for kind in (IMAGE, LABELS))

    def write_bytes(self, patient_id: str, study_id: str, kind: str, data: bytes) -> Path:
        target = self.path(patient_id, study_id, kind)
        with atomic_file(target) as out:
            out.write(data)
        return target

    def write_gzipped_copy(self, patient_id: str, study_id: str, kind: str, source: Path) -> Path:
        """``source`` as a .nii.gz: copied as it is when already gzip-compressed, compressed otherwise."""
        target = self.path(patient_id, study_id, kind)
        with open(source, "rb") as src, atomic_file(target) as out:
            if src.read(2) == b"\x1f\x8b":
                src.seek(0)
                shutil.copyfileobj(src, out, COPY_CHUNK)
            else:
                src.seek(0)
                with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0) as zipped:
                    shutil.copyfileobj(src, zipped, COPY_CHUNK)
        return target

    def remove_unlisted(self, listed: dict[str, set[str]]) -> int:
        """Delete the study folders no twin lists (``listed``: patient id → study ids) and stray temporary
        files; returns how many folders went."""
        removed = 0
        if not self.root.is_dir():
            return 0
        for patient in self.root.iterdir():
            for study in (patient.iterdir() if patient.is_dir() else ()):
                if study.name not in listed.get(patient.name, set()):
                    shutil.rmtree(study, ignore_errors=True)
                    removed += 1
                else:
                    for stray in study.glob("*.part"):
                        stray.unlink(missing_ok=True)
        return removed


class atomic_file:
    """A file written under ``<name>.part``, fsynced, renamed to ``name``, and its folder fsynced."""

    def __init__(self, target: Path):
        self.target = target
        self.temporary = target.with_name(target.name + ".part")

    def __enter__(self):
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.temporary, "wb")
        return self.file

    def __exit__(self, kind, error, trace):
        try:
            if kind is None:
                self.file.flush()
                os.fsync(self.file.fileno())
        finally:
            self.file.close()
        if kind is not None:
            self.temporary.unlink(missing_ok=True)
            return False
        os.replace(self.temporary, self.target)
        for folder in (self.target.parent, self.target.parent.parent, self.target.parent.parent.parent):
            fsync_folder(folder)   # the file's name, and the folders made for it, are on disk too
        return False


def fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
