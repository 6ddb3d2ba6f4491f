"""Studio jobs and the durable store they live in.

A job is its options, its state, its steps (each with a state and progress), the story and its scenes, and
what the services said about themselves. Every change of state and every finished step or scene is written in
one transaction before anyone is told of it (`JobStore.save`), so what a page or the API reported survives a
kill -9; only the token-by-token story and frame-by-frame video progress live in memory between writes.

SQLAlchemy Core, so the same statements run on SQLite (the default, made durable by apps/twins.py
open_database) and PostgreSQL (by URL).
"""

from __future__ import annotations

import copy
import secrets
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from apps.media.options import JobOptions
from apps.twins import reading

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)
UNFINISHED = (QUEUED, RUNNING)
PENDING = "pending"   # a step not started yet (steps share running, done, failed and cancelled with jobs)
STEPS = ("story", "narration", "pictures", "music", "video")
ID_BATCH = 500   # ids per IN (...) query: well under any database's limit of bound parameters

metadata = sa.MetaData()

jobs_table = sa.Table(
    "media_jobs", metadata,
    sa.Column("job_id", sa.String(32), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("options", sa.JSON, nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("started_ms", sa.BigInteger),
    sa.Column("finished_ms", sa.BigInteger),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("story", sa.Text, nullable=False),
    sa.Column("error", sa.JSON),
    sa.Column("video", sa.JSON),
    sa.Column("models", sa.JSON, nullable=False),
    # Times a process stopped while the job ran without putting it back in the queue (a crash, a kill -9).
    sa.Column("interruptions", sa.Integer, nullable=False),
    sa.Index("media_jobs_by_time", "created_ms"),
    sa.Index("media_jobs_by_state", "state"),
)

steps_table = sa.Table(
    "media_job_steps", metadata,
    sa.Column("job_id", sa.String(32), sa.ForeignKey("media_jobs.job_id"), primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(16), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("done", sa.BigInteger, nullable=False),
    sa.Column("total", sa.BigInteger, nullable=False),
    sa.Column("detail", sa.String(256), nullable=False),
)

scenes_table = sa.Table(
    "media_job_scenes", metadata,
    sa.Column("job_id", sa.String(32), sa.ForeignKey("media_jobs.job_id"), primary_key=True),
    sa.Column("scene", sa.Integer, primary_key=True),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("narration_s", sa.Float),
    sa.Column("picture", sa.Boolean, nullable=False),
    sa.Column("picture_source", sa.JSON),
)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_job_id() -> str:
    return "M-" + secrets.token_hex(6)


@dataclass
class Step:
    name: str
    state: str = PENDING
    done: int = 0
    total: int = 0
    detail: str = ""


@dataclass
class Scene:
    index: int              # from 1, as in the file names (scene-01.png)
    text: str
    narration_s: float | None = None
    picture: bool = False
    picture_source: dict | None = None   # the picture library's choice: picture_id, caption, similarity, credit


@dataclass
class Job:
    job_id: str
    options: JobOptions
    state: str = QUEUED
    created_ms: int = field(default_factory=now_ms)
    started_ms: int | None = None
    finished_ms: int | None = None
    version: int = 0
    story: str = ""
    steps: list[Step] = field(default_factory=lambda: [Step(name) for name in STEPS])
    scenes: list[Scene] = field(default_factory=list)
    error: dict | None = None    # {"step", "code", "message"}
    video: dict | None = None    # {"duration_s", "width", "height", "bytes"}
    models: dict = field(default_factory=dict)   # step → ModelInfo as a dict
    interruptions: int = 0
    queue_position: int | None = None   # not stored: the studio's queue says it

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def step(self, name: str) -> Step:
        return next(step for step in self.steps if step.name == name)

    def as_dict(self) -> dict:
        """The JSON the API and the event stream send."""
        return {"job_id": self.job_id, "state": self.state, "prompt": self.options.prompt,
                "options": self.options.as_dict(), "created_ms": self.created_ms, "started_ms": self.started_ms,
                "finished_ms": self.finished_ms, "version": self.version, "queue_position": self.queue_position,
                "steps": [asdict(step) for step in self.steps], "story": self.story,
                "scenes": [asdict(scene) for scene in self.scenes], "error": self.error, "video": self.video,
                "models": self.models}

    def snapshot(self) -> Job:
        """A copy to write from another thread while the job goes on changing."""
        return copy.deepcopy(self)


class JobStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def create_schema(self) -> None:
        metadata.create_all(self.engine)

    def save(self, job: Job) -> None:
        """The job, its steps and its scenes as they are now, in one transaction."""
        row = {"state": job.state, "options": job.options.as_dict(), "created_ms": job.created_ms,
               "started_ms": job.started_ms, "finished_ms": job.finished_ms, "version": job.version,
               "story": job.story, "error": job.error, "video": job.video, "models": job.models,
               "interruptions": job.interruptions}
        with self.engine.begin() as conn:
            updated = conn.execute(jobs_table.update().where(jobs_table.c.job_id == job.job_id).values(**row))
            if updated.rowcount == 0:
                conn.execute(jobs_table.insert().values(job_id=job.job_id, **row))
            for table in (steps_table, scenes_table):
                conn.execute(table.delete().where(table.c.job_id == job.job_id))
            conn.execute(steps_table.insert(), [
                {"job_id": job.job_id, "position": position, **asdict(step)}
                for position, step in enumerate(job.steps)])
            if job.scenes:
                conn.execute(scenes_table.insert(), [
                    {"job_id": job.job_id, "scene": scene.index, "text": scene.text,
                     "narration_s": scene.narration_s, "picture": scene.picture,
                     "picture_source": scene.picture_source} for scene in job.scenes])

    def delete(self, job_id: str) -> bool:
        """The job, its steps and its scenes, in one transaction; whether there was such a job."""
        with self.engine.begin() as conn:
            for table in (steps_table, scenes_table):   # before the job they refer to
                conn.execute(table.delete().where(table.c.job_id == job_id))
            return conn.execute(jobs_table.delete().where(jobs_table.c.job_id == job_id)).rowcount > 0

    def known(self, job_ids: Iterable[str]) -> set[str]:
        """Those of ``job_ids`` the store has."""
        job_ids, known = list(job_ids), set()
        with reading(self.engine) as conn:
            for start in range(0, len(job_ids), ID_BATCH):
                batch = job_ids[start:start + ID_BATCH]
                known.update(conn.execute(sa.select(jobs_table.c.job_id)
                                          .where(jobs_table.c.job_id.in_(batch))).scalars())
        return known

    def load(self, job_id: str) -> Job | None:
        jobs = self._load(sa.select(jobs_table).where(jobs_table.c.job_id == job_id))
        return jobs[0] if jobs else None

    def newest(self, limit: int) -> list[Job]:
        return self._load(sa.select(jobs_table).order_by(jobs_table.c.created_ms.desc(),
                                                         jobs_table.c.job_id.desc()).limit(limit))

    def unfinished(self) -> list[Job]:
        """Jobs a process left queued or running, oldest first: the order they were queued in."""
        return self._load(sa.select(jobs_table).where(jobs_table.c.state.in_(UNFINISHED))
                          .order_by(jobs_table.c.created_ms, jobs_table.c.job_id))

    def _load(self, query) -> list[Job]:
        with reading(self.engine) as conn:
            rows = conn.execute(query).all()
            ids = [row.job_id for row in rows]
            if not ids:
                return []
            steps = conn.execute(sa.select(steps_table).where(steps_table.c.job_id.in_(ids))
                                 .order_by(steps_table.c.position)).all()
            scenes = conn.execute(sa.select(scenes_table).where(scenes_table.c.job_id.in_(ids))
                                  .order_by(scenes_table.c.scene)).all()
        return [_job(row, [s for s in steps if s.job_id == row.job_id], [s for s in scenes if s.job_id == row.job_id])
                for row in rows]


def _job(row, steps, scenes) -> Job:
    return Job(row.job_id, JobOptions(**row.options), row.state, row.created_ms, row.started_ms, row.finished_ms,
               row.version, row.story,
               [Step(s.name, s.state, s.done, s.total, s.detail) for s in steps],
               [Scene(s.scene, s.text, s.narration_s, s.picture, s.picture_source) for s in scenes],
               row.error, row.video, row.models, row.interruptions)
