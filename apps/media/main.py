"""The media studio process: settings, the job store, the service clients, and its background tasks (the web
server and the studio's job runners) beside the gRPC health every workload serves."""

from __future__ import annotations

from pydantic import Field

from apps.clients import Availability, mesh_channel
from apps.media.jobs import JobStore
from apps.media.pipeline import Pipeline, PipelineSettings, ServiceChannels
from apps.media.studio import Studio
from apps.media.video import VideoOptions
from apps.media.web import create_web_app
from apps.twins import open_database
from apps.web import serve_web_app
from modalmesh.v1 import audio_pb2_grpc, text_pb2_grpc, vision_pb2_grpc
from services.runtime.server import Runtime, Service, run_service
from services.runtime.settings import ServiceSettings


class MediaSettings(ServiceSettings):
    workload: str = "media"
    grpc_port: int = Field(50121, ge=0, le=65535, description="gRPC health; 0 picks a free port")
    metrics_port: int = Field(9534, ge=-1, le=65535)
    http_host: str = Field("127.0.0.1", description="Address of the web pages (0.0.0.0 in a pod)")
    http_port: int = Field(8084, ge=0, le=65535)
    http_path_prefix: str = Field("/media", description="Path the ingress gateway serves the app under; "
                                  "the app answers there and at /")
    database_url: str = Field("", description="Jobs: postgresql+psycopg://user@host/db, or '' for the SQLite "
                              "file <data_dir>/media.sqlite3 (the jobs' files are under <data_dir>/jobs either way)")
    text_address: str = Field("localhost:50051", description="TextService (stories), host:port")
    audio_address: str = Field("localhost:50071", description="AudioService (narration), host:port")
    vision_address: str = Field("localhost:50081", description="VisionService (pictures), host:port")
    concurrent_jobs: int = Field(4, ge=1, le=64, description="Jobs run at once; their calls batch in the services")
    max_queued_jobs: int = Field(16, ge=1, le=10_000, description="Jobs waiting to run past which a new one is "
                                 "refused (429)")
    call_timeout_s: float = Field(120.0, gt=0, description="Deadline of each call to a service (one story, one "
                                  "narration, one picture)")
    unavailable_retries: int = Field(4, ge=0, le=10, description="Retries of a call that found its service "
                                     "UNAVAILABLE (restarting), 0.5 s apart then twice as long each time; "
                                     "then the step fails")
    scenes_at_once: int = Field(4, ge=1, le=12, description="Narration and picture calls in flight per job")
    picture_width: int = Field(1024, ge=64, le=2048, multiple_of=8, description="Size of each scene's picture "
                               "(framed to the video size, with room for the pan and zoom)")
    picture_height: int = Field(576, ge=64, le=2048, multiple_of=8)
    video_width: int = Field(1280, ge=64, le=3840, multiple_of=2, description="Video size (H.264 wants even sides)")
    video_height: int = Field(720, ge=64, le=2160, multiple_of=2)
    video_fps: int = Field(24, ge=1, le=60)
    transition_s: float = Field(0.6, ge=0, le=5, description="Crossfade between consecutive scenes")
    pause_s: float = Field(0.4, ge=0, le=10, description="Silence after each scene's narration")
    burn_subtitles: bool = Field(True, description="Subtitles drawn into the frames (subtitles.vtt is written "
                                 "either way)")


def build(runtime: Runtime) -> Service:
    settings: MediaSettings = runtime.settings
    data = settings.data_dir
    store = JobStore(open_database(settings.database_url or f"sqlite:///{data / 'media.sqlite3'}"))
    store.create_schema()
    channels = ServiceChannels({"text": (settings.text_address, text_pb2_grpc.TextServiceStub),
                                "audio": (settings.audio_address, audio_pb2_grpc.AudioServiceStub),
                                "vision": (settings.vision_address, vision_pb2_grpc.VisionServiceStub)},
                               lambda address: mesh_channel(address, settings))
    video = VideoOptions(width=settings.video_width, height=settings.video_height, fps=settings.video_fps,
                         transition_s=settings.transition_s, pause_s=settings.pause_s,
                         burn_subtitles=settings.burn_subtitles)
    availability = Availability()
    pipeline = Pipeline(channels, availability, PipelineSettings(
        call_timeout_s=settings.call_timeout_s, unavailable_retries=settings.unavailable_retries,
        picture_width=settings.picture_width, picture_height=settings.picture_height,
        scenes_at_once=settings.scenes_at_once, video=video))
    studio = Studio(store, pipeline, data / "jobs", availability, settings.concurrent_jobs, settings.max_queued_jobs)
    web = create_web_app(studio, settings.http_path_prefix)

    async def serve_pages() -> None:
        await studio.recovered.wait()   # no page or API answer shows a job the last process left as running
        await serve_web_app(web, settings.http_host, settings.http_port, studio.close)

    return Service(models=[], tasks=[serve_pages, studio.run])


def main() -> None:
    run_service(MediaSettings, build)
