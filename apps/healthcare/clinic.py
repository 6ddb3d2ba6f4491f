"""The app's state and what people do with it: the patients' twins, their studies on disk, ingest jobs,
notes, and the services' availability."""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np

from apps.clients import Availability
from apps.healthcare import patients, slices
from apps.healthcare.ingest import Ingestor
from apps.healthcare.jobs import Jobs
from apps.healthcare.monitoring import VITALS_ASSET
from apps.healthcare.notes import NoteTaker
from apps.healthcare.studies import IMAGE, LABELS, StudyFiles
from apps.twins import Twin, TwinStore

SLICE_CACHE = 8        # canonical volumes kept for the viewer (a 96³ study is a few MB)
SYNTHETIC = "synthetic"   # attribute of the demo's made-up patients (their seeds); pages say so


@dataclass
class Clinic:
    twins: TwinStore
    files: StudyFiles
    ingestor: Ingestor
    jobs: Jobs
    notes: NoteTaker
    availability: Availability
    watched: tuple[str, ...]
    iot: object                  # IoTServiceStub, for the vitals chart
    call_timeout_s: float
    _volumes: OrderedDict = field(default_factory=OrderedDict)

    def admit(self, sex: str, birth_year: int, *, synthetic: dict | None = None) -> Twin:
        """A new patient twin under a fresh pseudonym, with its own opaque bedside asset id; ``synthetic``
        marks a made-up patient with what it was drawn from."""
        attributes = {**patients.attributes(sex, birth_year), VITALS_ASSET: "vitals-" + secrets.token_hex(5)}
        if synthetic:
            attributes[SYNTHETIC] = synthetic
        for _ in range(8):   # a pseudonym already taken is drawn again
            patient_id = patients.new_pseudonym()
            try:
                return self.twins.create(patient_id, patients.DEFINITION, attributes)
            except Exception:
                if not self._exists(patient_id):
                    raise
        raise RuntimeError("no free pseudonym after 8 draws")

    def patient(self, patient_id: str) -> Twin:
        twin = self.twins.get(patient_id)
        if twin.definition != patients.DEFINITION:
            raise LookupError("no such patient")
        return twin

    def patient_list(self) -> list[Twin]:
        return self.twins.list(patients.DEFINITION)

    def study(self, patient_id: str, study_id: str) -> dict:
        study = self.patient(patient_id).reported(patients.IMAGING).get("studies", {}).get(study_id)
        if study is None:
            raise LookupError("no such study")
        return study

    def study_file(self, patient_id: str, study_id: str, kind: str):
        self.study(patient_id, study_id)   # only studies the twin lists are served
        return self.files.path(patient_id, study_id, kind)

    def slice_volume(self, patient_id: str, study_id: str) -> slices.SliceVolume:
        """The study and its labels in the viewer's canonical orientation, from a small LRU cache."""
        key = (patient_id, study_id)
        if key in self._volumes:
            self._volumes.move_to_end(key)
            return self._volumes[key]
        image = nib.load(self.study_file(patient_id, study_id, IMAGE))
        labels = nib.load(self.study_file(patient_id, study_id, LABELS))
        volume = slices.canonical(np.asarray(image.dataobj, dtype=np.float32),
                                  np.asarray(labels.dataobj, dtype=np.uint8), image.affine)
        self._volumes[key] = volume
        while len(self._volumes) > SLICE_CACHE:
            self._volumes.popitem(last=False)
        return volume

    def _exists(self, patient_id: str) -> bool:
        try:
            self.twins.get(patient_id)
            return True
        except LookupError:
            return False
