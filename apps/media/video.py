"""Video assembly: a story's scenes (picture, narration, text) made into one MP4 (H.264 + AAC) and WebVTT.

Timing: scene i lasts its narration plus ``pause_s`` (the last scene also up to one frame more, so the video
ends on a whole frame); the audio track is the narrations in order with those pauses, with the music bed under
them, and the video lasts exactly as long. Pictures are framed to the video's size (cover), drift with a slow
pan or zoom whose direction changes from scene to scene, and crossfade into each other across the scene
boundaries. Subtitles are cut from each scene's text and timed within its spoken part; the same cues are
burned into the frames and written as subtitles.vtt.

Frames are drawn with OpenCV and piped raw to the ffmpeg that imageio-ffmpeg ships, which encodes them and muxes
the audio track in one pass. Everything is written under temporary names and renamed at the end, so a
video.mp4 that exists is whole.
"""

from __future__ import annotations

import bisect
import os
import secrets
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import imageio_ffmpeg
import numpy as np
import soundfile
from scipy.ndimage import uniform_filter1d

from apps.media.music import read_wav, write_wav
from apps.media.subtitles import Cue, draw_cue, timed_cues, write_webvtt

__all__ = ["AssembledVideo", "Cue", "SceneMedia", "VideoCancelled", "VideoOptions", "assemble_video",
           "planned_duration_s"]

AUDIO_RATE = 44_100
ZOOM_MAX = 1.15               # the closest a picture is framed: 15% in from the cover framing
FULL_MOTION_S = 8.0           # a scene this long moves the whole way; a shorter one moves less, so never fast
MUSIC_UNDER_SPEECH_DB = -18.0  # the music bed relative to the narration's loudness, while someone speaks
MUSIC_BETWEEN_DB = -11.0       # ... and in the pauses between scenes
DUCK_RAMP_S = 0.3
MUSIC_FADE_OUT_S = 1.5
PEAK_LIMIT = 0.98


@dataclass(frozen=True)
class SceneMedia:
    text: str          # the scene's narration text: its subtitles
    picture: Path      # PNG or JPEG, any size (framed to the video size)
    narration: Path    # WAV, mono or stereo, any rate


@dataclass(frozen=True)
class VideoOptions:
    width: int = 1280
    height: int = 720
    fps: int = 24
    transition_s: float = 0.6     # crossfade between consecutive scenes
    pause_s: float = 0.4          # silence after each scene's narration
    music: Path | None = None     # a WAV music bed mixed under the narration
    burn_subtitles: bool = True


@dataclass(frozen=True)
class AssembledVideo:
    video: Path         # out_dir / "video.mp4": H.264 (yuv420p, +faststart) + AAC
    subtitles: Path     # out_dir / "subtitles.vtt": WebVTT, the same cues as burned in
    duration_s: float
    scene_starts_s: tuple[float, ...]
    cues: tuple[Cue, ...]


class VideoCancelled(Exception):
    """The assembly was cancelled; ffmpeg is stopped and no file of it is left."""


def assemble_video(scenes: Sequence[SceneMedia], out_dir: Path, options: VideoOptions = VideoOptions(),
                   progress: Callable[[int, int], None] | None = None,
                   cancelled: Callable[[], bool] | None = None) -> AssembledVideo:
    """Blocking (run it in a thread). ``progress(frames_done, frames_total)`` is called every few frames and
    ``cancelled()`` checked every frame: VideoCancelled once it is true. ValueError for bad input (no scenes,
    an unreadable picture or WAV, impossible options), RuntimeError if ffmpeg fails."""
    _check(scenes, options)
    narrations = [_read_scene_wav(number, scene.narration) for number, scene in enumerate(scenes, start=1)]
    timeline = Timeline.plan([len(samples) / AUDIO_RATE for samples in narrations], options)
    music = read_wav(options.music, AUDIO_RATE)[0] if options.music is not None else None
    pictures = [FramedPicture(_read_picture(number, scene.picture), options, motion_index=number - 1,
                              visible_s=timeline.visible_s(number - 1))
                for number, scene in enumerate(scenes, start=1)]
    cues = tuple(cue for index, (scene, samples) in enumerate(zip(scenes, narrations))
                 for cue in timed_cues(scene.text, *timeline.speech_span(index, samples)))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    partial_video, partial_vtt = out_dir / f".video.{token}.mp4.partial", out_dir / f".subtitles.{token}.vtt.partial"
    audio = out_dir / f".audio.{token}.wav.partial"
    try:
        write_wav(audio, audio_track(narrations, timeline, music), AUDIO_RATE)
        write_webvtt(partial_vtt, cues)
        _encode(Frames(pictures, timeline, cues if options.burn_subtitles else ()), audio, partial_video, options,
                progress, cancelled)
        for path in (partial_vtt, partial_video):
            _flush_to_disk(path)
        os.replace(partial_vtt, out_dir / "subtitles.vtt")
        os.replace(partial_video, out_dir / "video.mp4")    # last: a video.mp4 has its subtitles beside it
    finally:
        for path in (partial_video, partial_vtt, audio):
            path.unlink(missing_ok=True)
    return AssembledVideo(out_dir / "video.mp4", out_dir / "subtitles.vtt", timeline.total_s, timeline.starts, cues)


def planned_duration_s(narrations: Sequence[Path], options: VideoOptions = VideoOptions()) -> float:
    """How long the video of these narrations will last, from their WAV headers (to size a music bed)."""
    try:
        seconds = [soundfile.info(str(path)).duration for path in narrations]
    except (soundfile.LibsndfileError, RuntimeError, OSError) as error:
        raise ValueError(f"not a readable WAV file ({error})") from None
    return Timeline.plan(seconds, options).total_s


@dataclass(frozen=True)
class Timeline:
    starts: tuple[float, ...]          # when each scene (and its narration) begins
    narration_s: tuple[float, ...]
    fade_halves: tuple[float, ...]     # half the crossfade at each boundary (scene i into i + 1)
    total_s: float
    fps: int

    @classmethod
    def plan(cls, narration_s: Sequence[float], options: VideoOptions) -> Timeline:
        lengths = [seconds + options.pause_s for seconds in narration_s]
        starts = tuple(float(start) for start in np.concatenate([[0.0], np.cumsum(lengths)[:-1]]))
        frames = int(np.ceil(sum(lengths) * options.fps - 1e-6))   # a whole number of frames
        # A crossfade may take at most half of either scene, so two never overlap.
        halves = tuple(min(options.transition_s, lengths[i], lengths[i + 1]) / 2 for i in range(len(lengths) - 1))
        return cls(starts, tuple(narration_s), halves, frames / options.fps, options.fps)

    @property
    def frames(self) -> int:
        return round(self.total_s * self.fps)

    def end(self, index: int) -> float:
        return self.starts[index + 1] if index + 1 < len(self.starts) else self.total_s

    def visible(self, index: int) -> tuple[float, float]:
        """From when the scene starts fading in to when it has faded out."""
        before = self.fade_halves[index - 1] if index > 0 else 0.0
        after = self.fade_halves[index] if index < len(self.fade_halves) else 0.0
        return self.starts[index] - before, self.end(index) + after

    def visible_s(self, index: int) -> float:
        start, end = self.visible(index)
        return end - start

    def layers(self, t: float) -> list[tuple[int, float]]:
        """The scenes seen at time t with their weights: one, or two during a crossfade."""
        index = min(max(bisect.bisect_right(self.starts, t) - 1, 0), len(self.starts) - 1)
        for boundary in (index - 1, index):
            if 0 <= boundary < len(self.fade_halves) and self.fade_halves[boundary] > 0:
                middle, half = self.starts[boundary + 1], self.fade_halves[boundary]
                if middle - half <= t < middle + half:
                    weight = _smoothstep((t - (middle - half)) / (2 * half))
                    return [(boundary, 1.0 - weight), (boundary + 1, weight)]
        return [(index, 1.0)]

    def speech_span(self, index: int, samples: np.ndarray) -> tuple[float, float]:
        """Where in the scene the voice is heard (start, duration): the narration less its silent ends."""
        lead, tail = _voiced_span(samples, AUDIO_RATE)
        return self.starts[index] + lead, tail - lead


@dataclass(frozen=True)
class Motion:
    zoom: tuple[float, float]                              # from, to (1 = cover framing)
    position: tuple[tuple[float, float], tuple[float, float]]   # from, to: where the view sits, 0..1 across/down


# A different drift for each scene in turn, so consecutive scenes never move alike.
MOTIONS = (
    Motion((1.0, ZOOM_MAX), ((0.5, 0.5), (0.5, 0.4))),      # zoom in, rising a little
    Motion((1.12, 1.12), ((0.0, 0.5), (1.0, 0.5))),         # pan to the right
    Motion((ZOOM_MAX, 1.0), ((0.5, 0.4), (0.5, 0.5))),      # zoom out
    Motion((1.12, 1.12), ((1.0, 0.6), (0.0, 0.4))),         # pan to the left
    Motion((1.02, ZOOM_MAX), ((0.3, 0.7), (0.7, 0.3))),     # zoom in towards the upper right
    Motion((1.12, 1.12), ((0.5, 1.0), (0.5, 0.0))),         # tilt up
)


class FramedPicture:
    """A picture scaled once to cover the frame at the closest zoom; each frame is then one affine warp of it."""

    def __init__(self, picture: np.ndarray, options: VideoOptions, motion_index: int, visible_s: float):
        self.width, self.height = options.width, options.height
        height, width = picture.shape[:2]
        scale = max(self.width / width, self.height / height) * ZOOM_MAX
        size = (max(int(np.ceil(width * scale)), self.width + 1), max(int(np.ceil(height * scale)), self.height + 1))
        self.base = cv2.resize(picture, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
        motion = MOTIONS[motion_index % len(MOTIONS)]
        amount = min(1.0, visible_s / FULL_MOTION_S)
        self.zoom = _toward_middle(motion.zoom, amount)
        self.position = tuple(zip(*(_toward_middle(axis, amount) for axis in zip(*motion.position))))

    def frame(self, progress: float) -> np.ndarray:
        """The view at ``progress`` (0..1) through the scene's motion."""
        zoom = self.zoom[0] + (self.zoom[1] - self.zoom[0]) * progress
        x = self.position[0][0] + (self.position[1][0] - self.position[0][0]) * progress
        y = self.position[0][1] + (self.position[1][1] - self.position[0][1]) * progress
        view_w, view_h = self.width * ZOOM_MAX / zoom, self.height * ZOOM_MAX / zoom   # in base pixels
        left = x * (self.base.shape[1] - view_w)
        top = y * (self.base.shape[0] - view_h)
        k = zoom / ZOOM_MAX
        matrix = np.array([[k, 0.0, -k * left], [0.0, k, -k * top]])
        return cv2.warpAffine(self.base, matrix, (self.width, self.height), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REFLECT_101)


class Frames:
    """The video's frames in order, each composed for its time."""

    def __init__(self, pictures: Sequence[FramedPicture], timeline: Timeline, cues: Sequence[Cue]):
        self.pictures, self.timeline, self.cues = pictures, timeline, cues
        self.cue_starts = [cue.start_s for cue in cues]

    def __len__(self) -> int:
        return self.timeline.frames

    def frame(self, number: int) -> np.ndarray:
        t = number / self.timeline.fps
        layers = [(self._view(index, t), weight) for index, weight in self.timeline.layers(t)]
        frame = layers[0][0] if len(layers) == 1 else cv2.addWeighted(layers[0][0], layers[0][1], layers[1][0],
                                                                       layers[1][1], 0.0)
        cue = self.cue_at(t)
        if cue is not None:
            draw_cue(frame, cue.text)
        return frame

    def cue_at(self, t: float) -> Cue | None:
        index = bisect.bisect_right(self.cue_starts, t) - 1
        return self.cues[index] if index >= 0 and t < self.cues[index].end_s else None

    def _view(self, index: int, t: float) -> np.ndarray:
        start, end = self.timeline.visible(index)
        return self.pictures[index].frame(min(max((t - start) / (end - start), 0.0), 1.0))


def audio_track(narrations: Sequence[np.ndarray], timeline: Timeline, music: np.ndarray | None) -> np.ndarray:
    """The narrations at their scenes' starts (AUDIO_RATE, mono float32), the music bed under them: ducked
    while a voice speaks and swelling a little in the pauses, faded out at the end."""
    total = round(timeline.total_s * AUDIO_RATE)
    speech, speaking = np.zeros(total, np.float32), np.zeros(total, np.float32)
    for start_s, samples in zip(timeline.starts, narrations):
        start = round(start_s * AUDIO_RATE)
        placed = samples[:max(0, total - start)]
        speech[start:start + len(placed)] += placed
        speaking[start:start + len(placed)] = 1.0
    track = speech
    if music is not None:
        track = speech + _music_under(music, speaking, _loudness(np.concatenate(narrations)))
    peak = float(np.max(np.abs(track))) if total else 0.0
    return track * (PEAK_LIMIT / peak) if peak > PEAK_LIMIT else track


def _music_under(music: np.ndarray, speaking: np.ndarray, speech_level: float) -> np.ndarray:
    total = len(speaking)
    bed = np.zeros(total, np.float32)
    bed[:min(total, len(music))] = music[:total]
    level = _loudness(bed)
    if level == 0:
        return bed
    duck = uniform_filter1d(speaking, size=max(1, int(DUCK_RAMP_S * AUDIO_RATE)), mode="nearest")
    under, between = 10 ** (MUSIC_UNDER_SPEECH_DB / 20), 10 ** (MUSIC_BETWEEN_DB / 20)
    gain = (between + (under - between) * duck) * (speech_level or 0.1) / level
    fade = min(total, int(MUSIC_FADE_OUT_S * AUDIO_RATE))
    gain[total - fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    return (bed * gain).astype(np.float32)


def _loudness(samples: np.ndarray, rate: int = AUDIO_RATE) -> float:
    """RMS over the 50 ms windows within 20 dB of the loudest: the level of the sound, not of its silences."""
    window = int(0.05 * rate)
    count = len(samples) // window
    if not count:
        return float(np.sqrt(np.mean(samples ** 2))) if len(samples) else 0.0
    rms = np.sqrt(np.mean(samples[:count * window].reshape(count, window) ** 2, axis=1))
    loud = rms[rms >= rms.max() / 10]
    return float(np.sqrt(np.mean(loud ** 2))) if rms.max() > 0 else 0.0


def _voiced_span(samples: np.ndarray, rate: int) -> tuple[float, float]:
    """Seconds from the narration's start to its first and last 20 ms window within 30 dB of the loudest
    (a TTS voice has some silence before and after); the whole narration when it is silent throughout."""
    window = int(0.02 * rate)
    count = len(samples) // window
    whole = (0.0, len(samples) / rate)
    if not count:
        return whole
    rms = np.sqrt(np.mean(samples[:count * window].reshape(count, window) ** 2, axis=1))
    voiced = np.flatnonzero(rms >= rms.max() * 10 ** (-30 / 20))
    if not len(voiced) or rms.max() == 0:
        return whole
    return voiced[0] * window / rate, min(whole[1], (voiced[-1] + 1) * window / rate)


class _Encoder:
    """ffmpeg reading raw BGR frames on its stdin and the audio track from a WAV, writing the MP4."""

    def __init__(self, audio: Path, out: Path, options: VideoOptions):
        command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
                   "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{options.width}x{options.height}",
                   "-framerate", str(options.fps), "-i", "pipe:0", "-i", str(audio),
                   "-map", "0:v:0", "-map", "1:a:0",
                   "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p",
                   "-g", str(2 * options.fps),    # a keyframe every 2 s: seeking in the page stays quick
                   "-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart", "-f", "mp4", str(out)]
        self.log = tempfile.TemporaryFile()    # a file, not a pipe: ffmpeg can never block on a full one
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self.log)

    def write(self, frame: np.ndarray) -> None:
        try:
            self.process.stdin.write(np.ascontiguousarray(frame).data)
        except (BrokenPipeError, ValueError):
            self.process.wait()
            raise RuntimeError(self._failure()) from None

    def finish(self, cancelled: Callable[[], bool] | None) -> None:
        try:
            self.process.stdin.close()
        except BrokenPipeError:
            pass
        while True:
            try:
                code = self.process.wait(timeout=0.1)
                break
            except subprocess.TimeoutExpired:
                if cancelled is not None and cancelled():
                    raise VideoCancelled() from None
        if code != 0:
            raise RuntimeError(self._failure())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        if self.process.stdin and not self.process.stdin.closed:
            try:
                self.process.stdin.close()
            except BrokenPipeError:
                pass
        self.log.close()

    def _failure(self) -> str:
        self.log.seek(0)
        message = self.log.read().decode("utf-8", "replace").strip()[-800:]
        return f"ffmpeg failed (exit {self.process.returncode}): {message or 'no message'}"


def _encode(frames: Frames, audio: Path, out: Path, options: VideoOptions,
            progress: Callable[[int, int], None] | None, cancelled: Callable[[], bool] | None) -> None:
    total, every = len(frames), max(1, options.fps // 4)
    encoder = _Encoder(audio, out, options)
    try:
        if progress is not None:
            progress(0, total)
        for number in range(total):
            if cancelled is not None and cancelled():
                raise VideoCancelled()
            encoder.write(frames.frame(number))
            if progress is not None and (number + 1) % every == 0 and number + 1 < total:
                progress(number + 1, total)
        encoder.finish(cancelled)
        if progress is not None:
            progress(total, total)
    finally:
        encoder.stop()


def _check(scenes: Sequence[SceneMedia], options: VideoOptions) -> None:
    if not scenes:
        raise ValueError("a video needs at least one scene")
    problems = []
    if not (isinstance(options.width, int) and isinstance(options.height, int)
            and 16 <= options.width <= 4096 and 16 <= options.height <= 4096
            and options.width % 2 == 0 and options.height % 2 == 0):
        problems.append(f"the size must be even numbers of 16 to 4096 pixels (H.264 in yuv420p), "
                        f"not {options.width}x{options.height}")
    if not (isinstance(options.fps, int) and 1 <= options.fps <= 60):
        problems.append(f"fps must be a whole number of 1 to 60, not {options.fps}")
    if not (np.isfinite(options.transition_s) and 0 <= options.transition_s <= 5):
        problems.append(f"transition_s must be 0 to 5 s, not {options.transition_s}")
    if not (np.isfinite(options.pause_s) and 0 <= options.pause_s <= 10):
        problems.append(f"pause_s must be 0 to 10 s, not {options.pause_s}")
    if problems:
        raise ValueError("; ".join(problems))


def _read_scene_wav(number: int, path: Path) -> np.ndarray:
    try:
        return read_wav(path, AUDIO_RATE)[0]
    except ValueError as error:
        raise ValueError(f"scene {number}'s narration: {error}") from None


def _read_picture(number: int, path: Path) -> np.ndarray:
    """A PNG or JPEG as BGR (grey pictures made colour, 16-bit ones brought to 8-bit, EXIF rotation applied)."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise ValueError(f"scene {number}'s picture {Path(path).name}: cannot be read ({error.strerror})") from None
    picture = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if picture is None:
        raise ValueError(f"scene {number}'s picture {Path(path).name}: not a readable PNG or JPEG image")
    return picture


def _flush_to_disk(path: Path) -> None:
    with open(path, "rb") as file:
        os.fsync(file.fileno())


def _toward_middle(pair: tuple[float, float], amount: float) -> tuple[float, float]:
    """A motion's ends drawn toward their middle: ``amount`` 1 keeps them, 0 holds still at the middle."""
    middle = (pair[0] + pair[1]) / 2
    return middle + (pair[0] - middle) * amount, middle + (pair[1] - middle) * amount


def _smoothstep(x: float) -> float:
    x = min(max(x, 0.0), 1.0)
    return x * x * (3 - 2 * x)
