"""The media studio end to end, measured in one run: seconds of work per generated minute of video, and jobs
per minute with one job at a time against four at once.

Starts the text, audio and vision services and the media app (`python -m apps.media`), each a process with
its own certificate and mutual TLS between them, exactly as the local mesh runs them. Then, through the app's
JSON API:
  1. serial      --jobs jobs one after another (the app runs one job at a time: MODALMESH_CONCURRENT_JOBS=1);
                 per job: the wall time from submission to a finished video, the time of each step (from the
                 job's state, polled every 0.1 s), and the video's length;
  2. concurrent  the same jobs on an app that runs --concurrency (4) jobs at once, all submitted together, so
                 their story, narration and picture requests reach the services together and batch there.
Prompts differ per job; options are the app's defaults (4 scenes, 1280x720 at 24 fps unless --width etc.).

    .venv/bin/python bench/media_studio.py [--jobs 4] [--concurrency 4] [--width 1280 --height 720 --fps 24]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
from _common import exit_cleanly_on_sigterm, machine_description, running_service, write_record  # noqa: E402
from modalmesh.home import MeshHome  # noqa: E402
from modalmesh.launch import free_port  # noqa: E402

PROMPTS = ["a fox who loses a lantern in a snowy forest", "a robot in a harbour", "an owl who is afraid of the dark",
           "a girl who builds a kite on a windy hill", "a turtle on a long journey to the sea",
           "a dragon who finds a map in a cave", "a cat who makes a new friend in the city",
           "a mouse who helps a lost bird in the garden"]
FINISHED = ("done", "failed", "cancelled")


class StudioClient:
    def __init__(self, port: int):
        self.root = f"http://127.0.0.1:{port}/api"

    def call(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.root + path, data=data, method=method,
                                         headers={"Content-Type": "application/json", "Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as reply:
            return json.loads(reply.read())

    def ready(self) -> bool:
        try:
            self.call("GET", "/jobs")
            return True
        except OSError:
            return False

    def run_job(self, prompt: str, seed: int, timeout_s: float) -> dict:
        """Submit, follow the job's steps until it finishes; the timings of each step as seen by polling."""
        started = time.monotonic()
        job = self.call("POST", "/jobs", {"prompt": prompt, "seed": seed})
        step_done_s: dict[str, float] = {}
        while job["state"] not in FINISHED:
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"job {job['job_id']} did not finish in {timeout_s} s")
            time.sleep(0.1)
            job = self.call("GET", f"/jobs/{job['job_id']}")
            for step in job["steps"]:
                if step["state"] == "done" and step["name"] not in step_done_s:
                    step_done_s[step["name"]] = round(time.monotonic() - started, 2)
        if job["state"] != "done":
            raise RuntimeError(f"job {job['job_id']} ended {job['state']}: {job.get('error')}")
        return {"job_id": job["job_id"], "wall_s": round(time.monotonic() - started, 2),
                "video_s": job["video"]["duration_s"], "scenes": len(job["scenes"]), "step_done_s": step_done_s,
                "models": {k: v.get("name") for k, v in (job.get("models") or {}).items()}}


def run_phase(client: StudioClient, prompts: list[str], concurrency: int, timeout_s: float) -> dict:
    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        jobs = list(pool.map(lambda i: client.run_job(prompts[i], 1000 + i, timeout_s), range(len(prompts))))
    elapsed = time.monotonic() - started
    video_s = sum(j["video_s"] for j in jobs)
    return {"jobs": jobs, "elapsed_s": round(elapsed, 2), "jobs_per_min": round(60 * len(jobs) / elapsed, 2),
            "video_s": round(video_s, 2),
            # Work per minute of video: the wall time it took to make them, per minute of what was made.
            "seconds_per_video_minute": round(elapsed / (video_s / 60), 1),
            "mean_job_s": round(sum(j["wall_s"] for j in jobs) / len(jobs), 2)}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=4, help="jobs per phase")
    parser.add_argument("--concurrency", type=int, default=4, help="jobs at once in the second phase")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2, help="model threads of each service")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--image-model", default="picture-library",
                        help="MODALMESH_IMAGE_GENERATION_MODEL of the vision service (a diffusers id or path)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds one job may take")
    parser.add_argument("--out", type=Path, help="JSON record path (default bench/results/media_studio-<time>.json)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    exit_cleanly_on_sigterm()
    record = {"benchmark": "media_studio", "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine_description(),
              "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.jobs)]
    service_settings = {"model_threads": args.threads, "device": args.device}
    with _common.temporary_directory("modalmesh-bench-") as tmp:
        tmp = Path(tmp)
        home = MeshHome(tmp)
        with running_service("services.text", "text", home, tmp, **service_settings) as text, \
                running_service("services.audio", "audio", home, tmp, **service_settings) as audio, \
                running_service("services.vision", "vision", home, tmp, segmentation_model="",
                                image_generation_model=args.image_model, **service_settings) as vision:
            for service in (text, audio, vision):
                service.wait_serving(timeout=600)
            addresses = {"text_address": text.target, "audio_address": audio.target,
                         "vision_address": vision.target}
            for phase, concurrency in (("serial", 1), ("concurrent", args.concurrency)):
                record[phase] = run_app_phase(home, tmp / phase, addresses, args, prompts, concurrency)
                print(f"[{phase}] {record[phase]['jobs_per_min']} jobs/min, "
                      f"{record[phase]['seconds_per_video_minute']} s per minute of video, mean job "
                      f"{record[phase]['mean_job_s']} s", flush=True)
    record["ratios"] = {
        f"jobs_per_min_{args.concurrency}_vs_1": round(record["concurrent"]["jobs_per_min"]
                                                       / record["serial"]["jobs_per_min"], 3)}
    print()
    print(f"{'phase':<14}{'jobs/min':>10}{'s per video min':>17}{'mean job s':>12}")
    for phase in ("serial", "concurrent"):
        r = record[phase]
        print(f"{phase:<14}{r['jobs_per_min']:>10.2f}{r['seconds_per_video_minute']:>17.1f}{r['mean_job_s']:>12.1f}")
    print()
    for name, value in record["ratios"].items():
        print(f"{name:<28}{value:>8.3f}")
    print(f"record: {write_record('media_studio', record, args.out)}")
    return 0


def run_app_phase(home: MeshHome, data_dir: Path, addresses: dict, args, prompts: list[str],
                  concurrency: int) -> dict:
    """A fresh app (its own database) running ``concurrency`` jobs at once."""
    port = free_port()
    with running_service("apps.media", "media", home, data_dir.parent, data_dir=data_dir, http_port=port,
                         concurrent_jobs=concurrency, video_width=args.width, video_height=args.height,
                         video_fps=args.fps, **addresses) as app:
        app.wait_serving(timeout=120)
        client = StudioClient(port)
        deadline = time.monotonic() + 60
        while not client.ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the app's pages did not answer:\n{app.log_tail()}")
            time.sleep(0.2)
        client.run_job("a small boat on a quiet lake", 1, args.timeout)   # first-call costs, outside the timing
        return run_phase(client, prompts, concurrency, args.timeout)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; the services it started are stopped", file=sys.stderr)
        sys.exit(130)
