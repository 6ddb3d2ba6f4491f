"""The media studio's video assembly, subtitles and music bed, checked on real output.

Narrations are spoken by espeak-ng, pictures are scikit-image's photographs and a synthetic one; the MP4s are
made by the ffmpeg imageio-ffmpeg ships, then measured from outside: Debian's ffprobe for the streams, ffmpeg
decoding every frame and the audio track back for the pictures, subtitles, crossfades and the music bed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import pytest
import skimage.data
import soundfile
from scipy.signal import resample_poly

from apps.media.music import MOODS, music_bed, read_wav, write_wav
from apps.media.subtitles import MAX_LINE_CHARS, cue_texts, timed_cues, vtt_timestamp, webvtt
from apps.media.video import (SceneMedia, VideoCancelled, VideoOptions, assemble_video,
                              planned_duration_s)

FFPROBE = shutil.which("ffprobe") or "/usr/bin/ffprobe"
FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
RATE = 44_100
TEXTS = (
    "Once upon a time, a small fox lived at the edge of a quiet forest. Every morning she watched the sun rise "
    "over the hills.",
    "One day, she found a shining stone by the river.",
    "And that was the start of her great adventure.",
)
TIMESTAMP = r"(\d{2}):(\d{2}):(\d{2})\.(\d{3})"


# -- subtitles and music, in-process ----------------------------------------------------------------------

def test_cues_break_at_words_into_two_lines_and_keep_every_word():
    text = ("Once upon a time,   in a quiet village by the sea, there lived an old lighthouse keeper named Tom. "
            "Yes. He climbed the stairs every night. " + "x" * 100 + " The end.")
    cues = cue_texts(text)
    for cue in cues:
        lines = cue.split("\n")
        assert 1 <= len(lines) <= 2 and all(0 < len(line) <= MAX_LINE_CHARS for line in lines), cue
    every_word = " ".join(text.split()).replace("x" * 100, " ".join(["x" * 42, "x" * 42, "x" * 16]))
    assert " ".join(" ".join(cues).split()) == every_word          # in order, a too-long word cut in pieces
    assert cue_texts("") == [] and timed_cues("", 1.0, 2.0) == []


def test_cues_share_the_narration_in_proportion_to_their_length():
    cues = timed_cues(" ".join(TEXTS), 10.0, 12.0)
    assert cues[0].start_s == 10.0 and cues[-1].end_s == pytest.approx(22.0)
    for before, after in zip(cues, cues[1:]):
        assert before.end_s == pytest.approx(after.start_s)     # no gap, no overlap
    rates = [len(cue.text) / (cue.end_s - cue.start_s) for cue in cues]
    assert max(rates) == pytest.approx(min(rates))


def test_webvtt_escapes_text_and_writes_hours_minutes_seconds_millis():
    document = webvtt(timed_cues("a <b> & c --> d", 3723.0, 1.4567))
    assert document.startswith("WEBVTT\n\n1\n01:02:03.000 --> 01:02:04.457\n")
    assert "a &lt;b&gt; &amp; c --&gt; d" in document
    assert vtt_timestamp(0.0004) == "00:00:00.000" and vtt_timestamp(59.9996) == "00:01:00.000"


def test_music_bed_is_tonal_faded_normalised_and_the_same_for_a_seed():
    rate = 22_050
    for style in (*MOODS, "", "a style of its own"):
        samples = music_bed(12.0, style, seed=3, sample_rate=rate)
        assert samples.dtype == np.float32 and len(samples) == 12 * rate
        assert np.isfinite(samples).all() and np.abs(samples).max() <= 0.9
        body = samples[2 * rate:-3 * rate]
        assert 0.07 < np.sqrt(np.mean(body ** 2)) < 0.14, style       # about -20 dBFS
        assert np.abs(samples[:rate // 100]).max() < 1e-3 and np.abs(samples[-rate // 100:]).max() < 1e-2
        assert tuned_fraction(body, rate) > 0.75, style                # notes of the scale, not noise
    assert np.array_equal(music_bed(5.0, "noir", 7), music_bed(5.0, "noir", 7))
    assert not np.array_equal(music_bed(5.0, "noir", 7), music_bed(5.0, "noir", 8))
    assert not np.allclose(music_bed(5.0, "noir", 7), music_bed(5.0, "storybook", 7))
    noise = np.random.default_rng(0).standard_normal(8 * rate).astype(np.float32)
    assert tuned_fraction(noise, rate) < 0.6                           # the measure can tell
    for duration in (0, -1, float("nan"), 7200):
        with pytest.raises(ValueError):
            music_bed(duration, "noir", 1)


def test_wav_round_trip_mixes_channels_down_and_resamples(tmp_path):
    t = np.arange(48_000) / 48_000
    stereo = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 440 * t)], axis=1)
    soundfile.write(tmp_path / "stereo.wav", stereo, 48_000, subtype="PCM_16")
    samples, rate = read_wav(tmp_path / "stereo.wav", 22_050)
    assert rate == 22_050 and len(samples) == 22_050 and samples.ndim == 1
    assert np.sqrt(np.mean(samples[1000:-1000] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)
    write_wav(tmp_path / "out.wav", samples, rate)
    assert soundfile.info(tmp_path / "out.wav").samplerate == 22_050
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.wav", "stereo.wav"]   # no temporary file
    (tmp_path / "text.wav").write_text("not audio")
    with pytest.raises(ValueError, match="text.wav"):
        read_wav(tmp_path / "text.wav")


def tuned_fraction(samples: np.ndarray, rate: int) -> float:
    """The share of the spectrum's energy (60 Hz to 2 kHz) within 25 cents of an equal-tempered note."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples)))) ** 2
    hz = np.fft.rfftfreq(len(samples), 1 / rate)
    band = (hz > 60) & (hz < 2000)
    cents = 1200 * np.log2(hz[band] / 440.0)
    off = np.abs(cents - 100 * np.round(cents / 100))
    return float(spectrum[band][off <= 25].sum() / spectrum[band].sum())


# -- videos made from spoken narrations ------------------------------------------------------------------

@dataclass
class Story:
    scenes: list[SceneMedia]
    narration_s: list[float]
    options: VideoOptions
    folder: Path


@dataclass
class Made:
    result: object
    frames: np.ndarray     # [frame, y, x, BGR]
    audio: np.ndarray      # mono float32 at RATE
    probe: dict


@pytest.fixture(scope="module")
def story(tmp_path_factory) -> Story:
    """Three scenes: a colour PNG, a grey JPEG and a tall synthetic picture; narrations by espeak-ng, the
    second one made stereo at 48 kHz; a noir music bed for them."""
    folder = tmp_path_factory.mktemp("story")
    for number, (text, voice) in enumerate(zip(TEXTS, ("en-us", "en-gb", "en-us")), start=1):
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(folder / f"scene-{number}.wav"), text], check=True)
    mono, rate = soundfile.read(folder / "scene-2.wav", dtype="float32")
    stereo = np.stack([mono, mono], axis=1)
    soundfile.write(folder / "scene-2.wav", resampled(stereo, rate, 48_000), 48_000, subtype="PCM_16")
    cv2.imwrite(str(folder / "scene-1.png"), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "scene-2.jpg"), skimage.data.camera())
    tall = np.zeros((400, 120, 3), np.uint8)
    tall[:] = np.linspace(60, 220, 400, dtype=np.uint8)[:, None, None]
    tall[..., 0] = 180
    cv2.imwrite(str(folder / "scene-3.png"), tall)
    pictures = ("scene-1.png", "scene-2.jpg", "scene-3.png")
    scenes = [SceneMedia(text, folder / picture, folder / f"scene-{number}.wav")
              for number, (text, picture) in enumerate(zip(TEXTS, pictures), start=1)]
    narration_s = [soundfile.info(scene.narration).duration for scene in scenes]
    options = VideoOptions(width=320, height=180, fps=12, transition_s=0.6, pause_s=0.5, music=folder / "music.wav")
    write_wav(folder / "music.wav", music_bed(planned_duration_s([s.narration for s in scenes], options), "noir", 5),
              22_050)
    return Story(scenes, narration_s, options, folder)


@pytest.fixture(scope="module")
def videos(story, tmp_path_factory) -> dict[str, Made]:
    """The story made twice: with music and burned subtitles ("full"), and with neither ("plain")."""
    made = {}
    for name, options in (("full", story.options), ("plain", replace(story.options, music=None,
                                                                        burn_subtitles=False))):
        result = assemble_video(story.scenes, tmp_path_factory.mktemp(name), options)
        made[name] = Made(result, decode_frames(result.video, options), decode_audio(result.video),
                          ffprobe(result.video))
    return made


@pytest.mark.slow
def test_mp4_holds_h264_and_aac_lasting_the_narration_timeline(story, videos):
    expected = sum(story.narration_s) + len(story.scenes) * story.options.pause_s
    for name, made in videos.items():
        streams = {stream["codec_type"]: stream for stream in made.probe["streams"]}
        video, audio = streams["video"], streams["audio"]
        assert (video["codec_name"], video["pix_fmt"], video["width"], video["height"], video["r_frame_rate"]) == (
            "h264", "yuv420p", 320, 180, "12/1")
        assert audio["codec_name"] == "aac"
        video_s, audio_s = float(video["duration"]), float(audio["duration"])
        print(f"{name}: timeline {expected:.3f} s, video {video_s:.3f} s ({video_s - expected:+.3f}), "
              f"audio {audio_s:.3f} s ({audio_s - expected:+.3f})")
        assert abs(video_s - expected) < 0.5 and abs(audio_s - expected) < 0.5
        assert 0 <= video_s - expected < 1 / story.options.fps + 1e-3   # the last frame is whole, no more
        assert abs(audio_s - video_s) < 0.05
        assert made.result.duration_s == pytest.approx(video_s, abs=1e-3)
        assert len(made.frames) == round(video_s * story.options.fps)
        data = made.result.video.read_bytes()
        assert data.index(b"moov") < data.index(b"mdat")              # +faststart: plays while downloading
    assert sorted(path.name for path in videos["full"].result.video.parent.iterdir()) == ["subtitles.vtt",
                                                                                          "video.mp4"]


@pytest.mark.slow
def test_narrations_play_in_order_at_their_scenes_with_silent_pauses(story, videos):
    made = videos["plain"]
    starts = made.result.scene_starts_s
    assert starts[0] == 0.0
    for index, scene in enumerate(story.scenes):
        narration, _ = read_wav(scene.narration, RATE)
        begin = round(starts[index] * RATE)
        heard = made.audio[begin:begin + len(narration)]
        assert correlation(heard, narration) > 0.9, f"scene {index + 1}'s narration is not where it should be"
        pause_end = starts[index + 1] if index + 1 < len(starts) else made.result.duration_s
        pause = made.audio[round((starts[index] + story.narration_s[index] + 0.05) * RATE):
                           round((pause_end - 0.05) * RATE)]
        assert rms(pause) < 0.003
        assert starts[index] == pytest.approx(sum(story.narration_s[:index]) + index * story.options.pause_s,
                                              abs=1e-3)


@pytest.mark.slow
def test_webvtt_cues_lie_in_order_inside_their_scenes_narrations(story, videos):
    made = videos["full"]
    cues = parse_webvtt(made.result.subtitles.read_text(encoding="utf-8"))
    assert [(round(start, 3), round(end, 3), text) for start, end, text in cues] == [
        (round(cue.start_s, 3), round(cue.end_s, 3), cue.text) for cue in made.result.cues]
    for (_, end, _), (start, _, _) in zip(cues, cues[1:]):
        assert end <= start + 1e-3
    for index, text in enumerate(TEXTS):
        start, end = made.result.scene_starts_s[index], made.result.scene_starts_s[index] + story.narration_s[index]
        inside = [cue for cue in cues if start - 1e-3 <= cue[0] and cue[1] <= end + 1e-3]
        assert " ".join(" ".join(cue[2] for cue in inside).split()) == text
    assert len(cues) == sum(len(cue_texts(text)) for text in TEXTS)


@pytest.mark.slow
def test_subtitles_are_burned_in_at_cue_times_and_absent_in_the_pauses(story, videos):
    full, plain, fps = videos["full"], videos["plain"], story.options.fps
    band, top = slice(120, 180), slice(0, 90)      # the lower third, where subtitles sit, and the upper half
    for cue in full.result.cues:
        frame = round((cue.start_s + cue.end_s) / 2 * fps)
        assert difference(full.frames[frame][band], plain.frames[frame][band]) > 15, cue.text
        assert difference(full.frames[frame][top], plain.frames[frame][top]) < 3
    for index, start in enumerate(full.result.scene_starts_s):
        pause_middle = start + story.narration_s[index] + story.options.pause_s / 2
        frame = round(pause_middle * fps)
        if frame < len(full.frames):
            assert difference(full.frames[frame][band], plain.frames[frame][band]) < 3, f"pause {index + 1}"


@pytest.mark.slow
def test_scenes_crossfade_into_each_other_across_their_boundary(story, videos):
    frames, fps = videos["plain"].frames, story.options.fps
    for boundary in videos["plain"].result.scene_starts_s[1:]:
        half = story.options.transition_s / 2
        before, middle, after = (frames[round((boundary - half) * fps) - 1], frames[round(boundary * fps)],
                                 frames[round((boundary + half) * fps) + 1])
        apart = difference(before, after)
        assert apart > 20
        blend = (before.astype(np.float32) + after) / 2
        assert difference(middle, blend) < 0.3 * apart
        assert difference(middle, before) > 0.3 * apart and difference(middle, after) > 0.3 * apart


@pytest.mark.slow
def test_pictures_of_any_shape_cover_the_frame_and_drift_slowly(story, videos):
    made, fps = videos["plain"], story.options.fps
    starts, end = made.result.scene_starts_s, made.result.duration_s
    grey = made.frames[round((starts[1] + 1.0) * fps)].astype(np.int16)
    assert np.abs(grey[..., 0] - grey[..., 2]).mean() < 3          # the grey JPEG stays grey
    tall = made.frames[round((starts[2] + 1.0) * fps)]
    assert tall.mean(axis=(0, 2)).min() > 40 and tall.mean(axis=(1, 2)).min() > 40   # no black bars
    for first, last in ((starts[0], starts[1]), (starts[1], starts[2]), (starts[2], end)):
        scene = made.frames[round((first + 0.4) * fps):round((last - 0.4) * fps)]
        steps = [difference(a, b) for a, b in zip(scene, scene[1:])]
        assert difference(scene[0], scene[-1]) > 2 * max(steps), "the picture should drift, a little a frame"
    # The second scene pans sideways (its picture moves across), the first zooms in place.
    (dx, dy), _ = cv2.phaseCorrelate(*(grey_of(made.frames[round(t * fps)]) for t in (starts[1] + 0.4,
                                                                                      starts[1] + 2.0)))
    assert abs(dx) > 3 and abs(dx) > 3 * abs(dy)


@pytest.mark.slow
def test_music_bed_is_heard_under_the_narration_quieter_and_ducked(story, videos):
    full, plain = videos["full"].audio, videos["plain"].audio
    n = min(len(full), len(plain))
    music, speech, bed = full[:n] - plain[:n], plain[:n], read_wav(story.options.music, RATE)[0][:n]
    starts, spoken_s = videos["full"].result.scene_starts_s, story.narration_s
    # The first two scenes (the last fades out): while the voice speaks, and the middle of the pause after.
    spoken = np.concatenate([np.arange(round((starts[i] + 0.2) * RATE), round((starts[i] + spoken_s[i] - 0.2) * RATE))
                             for i in (0, 1)])
    pauses = np.concatenate([np.arange(round((starts[i + 1] - 0.33) * RATE), round((starts[i + 1] - 0.17) * RATE))
                             for i in (0, 1)])
    under_db = 20 * np.log10(rms(music[spoken]) / rms(speech[spoken]))
    ducked_db = 20 * np.log10((rms(music[pauses]) / rms(bed[pauses])) / (rms(music[spoken]) / rms(bed[spoken])))
    print(f"music under speech {under_db:.1f} dB; ducked by {ducked_db:.1f} dB while the voice speaks")
    assert -30 < under_db < -10                                    # audible, and well under the voice
    assert ducked_db > 4
    assert rms(full[pauses]) > 0.01 > 5 * rms(plain[pauses])       # the pauses are music, not silence


# -- cancellation, short stories, bad input --------------------------------------------------------------

@pytest.mark.slow
def test_cancel_stops_ffmpeg_within_a_second_and_leaves_no_file(story, tmp_path):
    out, stop, seen, cancelled_at = tmp_path / "job", threading.Event(), [], []

    def progress(done: int, total: int) -> None:
        seen.append((done, total))
        assert not (out / "video.mp4").exists()                  # never a partial video under the final name

    def cancel_once_started() -> None:
        while not seen or seen[-1][0] < 24:
            time.sleep(0.01)
        cancelled_at.append(time.monotonic())
        stop.set()

    canceller = threading.Thread(target=cancel_once_started, daemon=True)
    canceller.start()
    with pytest.raises(VideoCancelled):
        assemble_video(story.scenes * 4, out, replace(story.options, width=640, height=360), progress, stop.is_set)
    stopped_s = time.monotonic() - cancelled_at[0]
    print(f"stopped {stopped_s * 1000:.0f} ms after the cancel, at frame {seen[-1][0]} of {seen[-1][1]}")
    assert stopped_s < 1.0
    assert list(out.iterdir()) == []
    assert not ffmpeg_children()


@pytest.mark.slow
def test_progress_counts_every_frame_and_a_finished_video_replaces_the_last(story, tmp_path):
    scene = replace(story.scenes[2], text="Hi.")
    tone = (0.3 * np.sin(2 * np.pi * 330 * np.arange(640) / 8000)).astype(np.float32)   # 80 ms at 8 kHz
    write_wav(tmp_path / "short.wav", tone, 8000)
    scene = replace(scene, narration=tmp_path / "short.wav")
    seen = []
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "video.mp4").write_bytes(b"an older video")
    made = assemble_video([scene], tmp_path / "out", story.options, lambda done, total: seen.append((done, total)))
    frames = round(made.duration_s * story.options.fps)
    assert made.duration_s == pytest.approx(0.08 + story.options.pause_s, abs=1 / story.options.fps)
    assert seen[0] == (0, frames) and seen[-1] == (frames, frames)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    streams = {stream["codec_type"]: float(stream["duration"]) for stream in ffprobe(made.video)["streams"]}
    assert abs(streams["video"] - made.duration_s) < 0.05 and abs(streams["audio"] - made.duration_s) < 0.05
    assert [cue.text for cue in made.cues] == ["Hi."] and made.cues[0].end_s <= 0.08 + 1e-6


def bad_inputs(story: Story, folder: Path):
    (folder / "text.png").write_text("not a picture")
    (folder / "text.wav").write_text("not audio")
    soundfile.write(folder / "empty.wav", np.zeros(0, np.float32), 22_050)
    scene = story.scenes[0]
    return [
        ([], story.options, "at least one scene"),
        ([replace(scene, picture=folder / "text.png")], story.options, "scene 1's picture text.png: not a readable"),
        ([scene, replace(scene, picture=folder / "missing.png")], story.options, "scene 2's picture missing.png"),
        ([replace(scene, narration=folder / "text.wav")], story.options, "scene 1's narration: text.wav"),
        ([replace(scene, narration=folder / "empty.wav")], story.options, "holds no samples"),
        ([scene], replace(story.options, width=321), "even numbers"),
        ([scene], replace(story.options, fps=0), "fps"),
        ([scene], replace(story.options, pause_s=-1), "pause_s"),
        ([scene], replace(story.options, music=folder / "text.wav"), "text.wav"),
    ]


def test_bad_input_raises_a_clear_value_error_and_writes_nothing(story, tmp_path):
    for number, (scenes, options, message) in enumerate(bad_inputs(story, tmp_path)):
        out = tmp_path / f"out-{number}"
        with pytest.raises(ValueError, match=re.escape(message)):
            assemble_video(scenes, out, options)
        assert not out.exists() or not list(out.iterdir())


# -- helpers ----------------------------------------------------------------------------------------------

def ffprobe(path: Path) -> dict:
    output = subprocess.run([FFPROBE, "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
                            check=True, capture_output=True).stdout
    return json.loads(output)


def decode_frames(path: Path, options: VideoOptions) -> np.ndarray:
    raw = subprocess.run([FFMPEG, "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "bgr24", "-"],
                         check=True, capture_output=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, options.height, options.width, 3)


def decode_audio(path: Path) -> np.ndarray:
    raw = subprocess.run([FFMPEG, "-v", "error", "-i", str(path), "-map", "0:a", "-f", "f32le", "-ac", "1",
                          "-ar", str(RATE), "-"], check=True, capture_output=True).stdout
    return np.frombuffer(raw, np.float32)


def parse_webvtt(document: str) -> list[tuple[float, float, str]]:
    """WebVTT as a browser reads it: the header, then blocks of an optional id, a timing line and text."""
    header, *blocks = document.strip("\n").split("\n\n")
    assert header == "WEBVTT"
    cues = []
    for block in blocks:
        lines = block.split("\n")
        timing = lines.index(next(line for line in lines if "-->" in line))
        match = re.fullmatch(rf"{TIMESTAMP} --> {TIMESTAMP}", lines[timing])
        assert match, lines[timing]
        parts = [int(part) for part in match.groups()]
        start, end = (h * 3600 + m * 60 + s + ms / 1000 for h, m, s, ms in (parts[:4], parts[4:]))
        text = lines[timing + 1:]
        assert start < end and 1 <= len(text) <= 2 and all(len(line) <= MAX_LINE_CHARS for line in text)
        cues.append((start, end, "\n".join(text).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")))
    return cues


def resampled(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    return resample_poly(samples, target, rate, axis=0).astype(np.float32)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    return float(np.dot(a[:n], b[:n]) / (np.linalg.norm(a[:n]) * np.linalg.norm(b[:n]) + 1e-12))


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))


def difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b).mean())


def grey_of(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY).astype(np.float32)


def ffmpeg_children() -> list[int]:
    """Processes of this test whose program is ffmpeg (from /proc: their parent and command)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name, ppid = stat[stat.index("(") + 1:stat.rindex(")")], int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == os.getpid() and "ffmpeg" in name:
            found.append(int(entry))
    return found
