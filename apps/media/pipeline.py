"""The steps of one studio job: story → narration and pictures (in parallel) → music → video.

Each step reads the outputs earlier steps kept in the job's folder and keeps its own there, each file written
under a temporary name and renamed, so a file that exists is whole. A step skips what exists: a retried or
resumed job redoes only what is missing. Calls to the services carry deadlines; UNAVAILABLE (a service
restarting) is retried a few times with backoff, then the step fails with the status the service gave.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import soundfile
from google.protobuf.json_format import MessageToDict

from apps.clients import Availability
from apps.media import music, video
from apps.media.jobs import CANCELLED, DONE, FAILED, RUNNING, Job, Scene, Step
from modalmesh.v1 import audio_pb2, text_pb2, vision_pb2

FIRST_RETRY_S = 0.5   # after UNAVAILABLE; each retry waits twice as long as the one before
MAX_STORY_TOKENS = 300   # the storyteller's stories are 60 to 200; a scene's text stays within Synthesize's limit
# Sampling of the story: the storyteller's own defaults (generation_config.json), also sound for larger models.
# The service's defaults (temperature 1, no nucleus) let a small model wander off in its first words.
STORY_TEMPERATURE = 0.7
STORY_TOP_P = 0.9
MAX_PICTURE_PROMPT_CHARS = 2000
# Stories as the storyteller was taught to be asked for them (scripts/train_storyteller.py REQUESTS).
REQUEST_OPENINGS = ("write", "tell", "can you", "could you", "please", "i would like", "story about", "story set")
SENTENCE = re.compile(r"[^.!?]+(?:[.!?]+[\"'”’)]*|$)")
MUSIC_SAMPLE_RATE = 22050
PERSIST_EVERY_S = 1.0   # the story as it streams is written at most this often; every finished step at once

Changed = Callable[[bool], Awaitable[None]]   # the job changed; True: write it before telling anyone


class StepFailed(Exception):
    """A step that cannot go on: the step, the status code (gRPC's name, or the studio's own) and why."""

    def __init__(self, step: str, code: str, message: str):
        super().__init__(f"{step}: {code}: {message}")
        self.step, self.code, self.message = step, code, message

    def as_dict(self) -> dict:
        return {"step": self.step, "code": self.code, "message": self.message}


@dataclass(frozen=True)
class PipelineSettings:
    call_timeout_s: float = 120.0
    unavailable_retries: int = 4   # 0.5 + 1 + 2 + 4 s: a service restarting has 7.5 s to come back
    picture_width: int = 1024
    picture_height: int = 576
    scenes_at_once: int = 4   # per job and step: calls in flight for one job's scenes
    video: video.VideoOptions = video.VideoOptions()


class ServiceChannels:
    """A channel and a stub per service. A channel that keeps failing to connect is replaced by a fresh one:
    gRPC waits longer and longer (up to two minutes) between attempts to reconnect a channel, while a fresh
    channel connects at its first call, so a service that is back is used by the next attempt or retry."""

    def __init__(self, services: dict[str, tuple[str, type]], open_channel: Callable[[str], grpc.aio.Channel]):
        self.services, self.open_channel = services, open_channel   # name → (address, stub class)
        self.channels: dict[str, grpc.aio.Channel] = {}
        self.stubs: dict[str, object] = {}
        self._retiring: set[asyncio.Task] = set()
        for name in services:
            self._open(name)

    def stub(self, name: str):
        return self.stubs[name]

    def after_unavailable(self, name: str, grace_s: float) -> None:
        """Replace a channel that failed to connect. Calls still on the old one (a job's other scenes) end with
        their own status within ``grace_s``, the calls' deadline: closing it at once would cancel them, and a
        cancelled call reads as a cancelled job."""
        channel = self.channels[name]
        if channel.get_state() == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            self._open(name)
            closing = asyncio.ensure_future(channel.close(grace=grace_s))
            self._retiring.add(closing)
            closing.add_done_callback(self._retiring.discard)

    def _open(self, name: str) -> None:
        address, stub_class = self.services[name]
        self.channels[name] = self.open_channel(address)
        self.stubs[name] = stub_class(self.channels[name])


class Pipeline:
    def __init__(self, channels: ServiceChannels, availability: Availability, settings: PipelineSettings):
        self.channels, self.availability, self.settings = channels, availability, settings

    async def run(self, job: Job, folder: Path, changed: Changed) -> None:
        """All the steps of ``job``; StepFailed when one fails (its step state says so too)."""
        folder.mkdir(parents=True, exist_ok=True)
        remove_partial_files(folder)
        run = JobRun(job, folder, changed)
        await self._step(run, "story", self.write_story)
        outcomes = await asyncio.gather(self._step(run, "narration", self.narrate),
                                        self._step(run, "pictures", self.picture), return_exceptions=True)
        # Both steps end before the job fails (what the other one finished is kept for a retry).
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        await self._step(run, "music", self.compose_music)
        await self._step(run, "video", self.assemble)

    async def _step(self, run: JobRun, name: str, work: Callable[[JobRun, Step], Awaitable[None]]) -> None:
        step = run.job.step(name)
        if step.state != DONE:   # a step done before only checks that its outputs are all there
            step.state = RUNNING
            await run.changed(True)
        try:
            await work(run, step)
        except asyncio.CancelledError:
            step.state = CANCELLED
            raise
        except Exception:
            step.state = FAILED
            raise
        step.state = DONE
        await run.changed(True)

    # -- story ---------------------------------------------------------------------------------------

    async def write_story(self, run: JobRun, step: Step) -> None:
        path = run.folder / "story.txt"
        if path.exists():
            run.job.story = path.read_text()
        else:
            await self._call("text", "story", lambda text: self._stream_story(text, run, step))
            await asyncio.to_thread(write_atomic, path, run.job.story.encode())
        texts = split_scenes(run.job.story, run.job.options.scenes)
        if not texts:
            path.unlink(missing_ok=True)
            raise StepFailed("story", "EMPTY_STORY", "the text service wrote no sentence for this prompt")
        kept = {scene.index: scene for scene in run.job.scenes}
        run.job.scenes = [kept[i] if i in kept and kept[i].text == text else Scene(i, text)
                          for i, text in enumerate(texts, 1)]
        scenes = quantity(len(texts), "scene")
        step.detail = f"{quantity(step.done, 'token')}, {scenes}" if step.done else scenes

    async def _stream_story(self, text, run: JobRun, step: Step) -> None:
        job = run.job
        request = text_pb2.GenerateRequest(
            chat=text_pb2.Chat(messages=[text_pb2.ChatMessage(role="user", content=story_request(job.options.prompt))]),
            sampling=text_pb2.SamplingParameters(max_new_tokens=MAX_STORY_TOKENS, seed=job.options.seed,
                                                 temperature=STORY_TEMPERATURE, top_p=STORY_TOP_P))
        job.story, step.done = "", 0   # a retried stream starts over
        written_at = asyncio.get_running_loop().time()
        async for reply in text.Generate(request, timeout=self.settings.call_timeout_s):
            if reply.HasField("model"):
                job.models["story"] = model_record(reply.model)
            job.story += reply.text
            step.done = reply.completion_tokens or step.done + reply.token_count
            step.detail = f"{step.done} tokens"
            now = asyncio.get_running_loop().time()
            persist = now - written_at >= PERSIST_EVERY_S
            written_at = now if persist else written_at
            await run.changed(persist)
        job.story = job.story.strip()

    # -- narration and pictures ----------------------------------------------------------------------

    async def narrate(self, run: JobRun, step: Step) -> None:
        options = run.job.options

        async def one(scene: Scene) -> None:
            path = run.folder / scene_file(scene, "wav")
            if not path.exists():
                request = audio_pb2.SynthesizeRequest(text=scene.text, voice=options.voice,
                                                      words_per_minute=options.words_per_minute,
                                                      encoding=audio_pb2.AUDIO_ENCODING_WAV)
                reply = await self._call("audio", "narration", lambda audio: audio.Synthesize(
                    request, timeout=self.settings.call_timeout_s))
                await asyncio.to_thread(write_atomic, path, reply.audio.data)
                run.job.models["narration"] = model_record(reply.model)
            if scene.narration_s is None:   # written by an earlier run that stopped before recording it
                scene.narration_s = round(soundfile.info(str(path)).duration, 3)

        await self._each_scene(run, step, one)

    async def picture(self, run: JobRun, step: Step) -> None:
        options, size = run.job.options, (self.settings.picture_width, self.settings.picture_height)

        async def one(scene: Scene) -> None:
            path = run.folder / scene_file(scene, "png")
            if not path.exists():
                request = vision_pb2.GenerateImageRequest(
                    prompt=picture_prompt(scene.text, options.prompt), width=size[0], height=size[1],
                    # One seed for the whole story: where pictures are equally good matches (a place by day, at
                    # dusk or at night), every scene makes the same choice, so the light does not jump.
                    seed=options.seed, style=options.style,
                    encoding=vision_pb2.IMAGE_ENCODING_PNG)
                image = await self._call("vision", "pictures", lambda vision: self._generate_image(vision, request))
                await asyncio.to_thread(write_atomic, path, image.data)
                run.job.models["pictures"] = model_record(image.model)
                scene.picture_source = picture_source(image)
            scene.picture = True

        await self._each_scene(run, step, one)

    async def _generate_image(self, vision, request) -> vision_pb2.GeneratedImage:
        async for reply in vision.GenerateImage(request, timeout=self.settings.call_timeout_s):
            if reply.HasField("image"):
                return reply.image
        raise StepFailed("pictures", "INTERNAL", "the vision service ended its stream without an image")

    async def _each_scene(self, run: JobRun, step: Step, one: Callable[[Scene], Awaitable[None]]) -> None:
        """``one`` for every scene, a few at once; each finished scene is written before it counts. When a
        scene fails the others still finish (a retry then has less to do), and the first failure is raised."""
        scenes_at_once = asyncio.Semaphore(self.settings.scenes_at_once)
        step.done, step.total = 0, len(run.job.scenes)

        async def counted(scene: Scene) -> None:
            async with scenes_at_once:
                await one(scene)
            step.done += 1
            step.detail = f"{step.done} of {quantity(step.total, 'scene')}"
            await run.changed(True)

        outcomes = await asyncio.gather(*(counted(scene) for scene in run.job.scenes), return_exceptions=True)
        failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if failures:
            raise failures[0]

    # -- music and video -----------------------------------------------------------------------------

    async def compose_music(self, run: JobRun, step: Step) -> None:
        options, path = run.job.options, run.folder / "music.wav"
        step.total = 1
        if not options.music:
            step.done, step.detail = 1, "off"
            return
        if not path.exists():
            narrations = [run.folder / scene_file(scene, "wav") for scene in run.job.scenes]
            try:
                duration_s = video.planned_duration_s(narrations, self.settings.video)
                samples = await asyncio.to_thread(music.music_bed, duration_s, options.style, options.seed,
                                                  MUSIC_SAMPLE_RATE)
            except ValueError as error:   # an unreadable narration, or a video longer than a music bed can be
                raise StepFailed("music", "MUSIC_FAILED", str(error)) from None
            await asyncio.to_thread(music.write_wav, path, samples, MUSIC_SAMPLE_RATE)   # whole or absent
        step.done, step.detail = 1, f"{soundfile.info(str(path)).duration:.1f} s"

    async def assemble(self, run: JobRun, step: Step) -> None:
        job, folder = run.job, run.folder
        if job.video and (folder / "video.mp4").exists() and (folder / "subtitles.vtt").exists():
            return
        scenes = [video.SceneMedia(scene.text, folder / scene_file(scene, "png"), folder / scene_file(scene, "wav"))
                  for scene in job.scenes]
        options = replace(self.settings.video, music=folder / "music.wav" if job.options.music else None)
        frames = FrameCount()
        stop = threading.Event()
        work = asyncio.ensure_future(asyncio.to_thread(video.assemble_video, scenes, folder, options, frames.update,
                                                       stop.is_set))
        try:
            while not work.done():   # the thread counts frames; the job shows the count twice a second
                await asyncio.wait([work], timeout=0.5)
                step.done, step.total = frames.done, frames.total
                step.detail = f"{frames.done} of {frames.total} frames" if frames.total else ""
                await run.changed(False)
            made = work.result()
        except (ValueError, RuntimeError) as error:   # unreadable inputs, or ffmpeg failed
            raise StepFailed("video", "VIDEO_FAILED", str(error)) from None
        except asyncio.CancelledError:
            stop.set()   # ffmpeg is stopped and the partial files removed before the job counts as cancelled
            await asyncio.wait([work], timeout=10)
            raise
        job.video = {"duration_s": round(made.duration_s, 3), "width": options.width, "height": options.height,
                     "bytes": made.video.stat().st_size, "burned_subtitles": options.burn_subtitles}
        step.detail = f"{made.duration_s:.1f} s of video"

    # -- calls ---------------------------------------------------------------------------------------

    async def _call(self, service: str, step: str, attempt: Callable[[object], Awaitable]):
        """``attempt(stub)`` until it succeeds, retrying UNAVAILABLE with backoff; StepFailed otherwise."""
        retries = self.settings.unavailable_retries
        for delay in [FIRST_RETRY_S * 2**n for n in range(retries)] + [None]:
            try:
                result = await attempt(self.channels.stub(service))
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.INVALID_ARGUMENT:   # bad input is ours, not the service's
                    self.availability.failed(service, error)
                if error.code() != grpc.StatusCode.UNAVAILABLE:
                    raise StepFailed(step, error.code().name, f"{service} service: {error.details()}") from None
                self.channels.after_unavailable(service, self.settings.call_timeout_s)
                if delay is None:
                    raise StepFailed(step, "UNAVAILABLE", f"{service} service: {error.details()} (tried "
                                     f"{retries + 1} times)") from None
                await asyncio.sleep(delay)
                continue
            self.availability.succeeded(service)
            return result


@dataclass
class FrameCount:
    done: int = 0
    total: int = 0

    def update(self, done: int, total: int) -> None:
        self.done, self.total = done, total


@dataclass
class JobRun:
    job: Job
    folder: Path
    changed: Changed


def story_request(prompt: str) -> str:
    """The prompt as the storyteller understands it: a request as it is, a bare subject wrapped in one."""
    if prompt.lower().startswith(REQUEST_OPENINGS):
        return prompt
    subject = prompt.rstrip(".!? ")
    return f"Write a story about {subject[:1].lower() + subject[1:] if subject[1:2].islower() else subject}."


def split_scenes(story: str, most: int) -> list[str]:
    """The story's sentences in at most ``most`` scenes, in order, as even as whole sentences allow."""
    sentences = [s.strip() for s in SENTENCE.findall(" ".join(story.split())) if s.strip(" .!?\"'")]
    count = min(most, len(sentences))
    scenes, start = [], 0
    for i in range(count):
        size = len(sentences) // count + (1 if i < len(sentences) % count else 0)
        scenes.append(" ".join(sentences[start:start + size]))
        start += size
    return scenes


def picture_prompt(scene_text: str, job_prompt: str) -> str:
    """The job's prompt, then the scene: a scene's sentence alone may not say where it is, and the prompt
    first weighs more in the match (the picture library's caption similarity)."""
    return f"{job_prompt}: {scene_text}"[:MAX_PICTURE_PROMPT_CHARS]


def quantity(count: int, noun: str) -> str:
    """"1 scene", "3 scenes": the steps' details read as sentences."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def model_record(model) -> dict:
    """A service's ModelInfo as the job keeps it: name, version, provenance, device, dtype."""
    return MessageToDict(model, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def picture_source(image) -> dict | None:
    if not image.HasField("source"):
        return None
    source = image.source
    return {"picture_id": source.picture_id, "caption": source.caption,
            "similarity": round(float(source.similarity), 4), "credit": source.credit}


def scene_file(scene: Scene, extension: str) -> str:
    return f"scene-{scene.index:02d}.{extension}"


PARTIAL = ".partial"   # the ending of every file being written in a job's folder (apps/media/video.py's too)


def write_atomic(path: Path, data: bytes) -> None:
    """``data`` under a temporary name beside ``path``, flushed to disk, then renamed: whole or absent."""
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}{PARTIAL}")
    try:
        with open(partial, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def remove_partial_files(folder: Path) -> None:
    """What a process killed mid-write left behind."""
    for partial in folder.glob(f".*{PARTIAL}"):
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
