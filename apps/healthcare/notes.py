"""Clinical notes on the twin: a typed note is summarised by TextService.Summarize; a voice note is first
transcribed by AudioService.Transcribe. The note, its summary and the models that made them become one
entry of the twin's ``notes`` feature, in one revision."""

from __future__ import annotations

import asyncio
import io
import wave
from dataclasses import dataclass

import grpc

from apps.healthcare import patients
from apps.twins import TwinStore, now_ms
from modalmesh.v1 import audio_pb2, audio_pb2_grpc, text_pb2, text_pb2_grpc
from services.runtime.errors import bad_request_of

MAX_NOTE_CHARS = 20_000
MAX_VOICE_BYTES = 8 * 2**20
SUMMARY_SENTENCES = 2
AUDIO_CHUNK = 64 * 1024


class NoteRefused(Exception):
    """The note itself is wrong (HTTP 400), with the service's field violations if it said why."""

    def __init__(self, message: str, violations: list[tuple[str, str]] = ()):
        super().__init__(message)
        self.message, self.violations = message, list(violations)


class NoteServiceDown(Exception):
    """A service the note needs did not answer (HTTP 503)."""


@dataclass
class NoteTaker:
    twins: TwinStore
    text: text_pb2_grpc.TextServiceStub
    audio: audio_pb2_grpc.AudioServiceStub
    timeout_s: float

    async def add_text(self, patient_id: str, text: str, *, at_ms: int | None = None) -> dict:
        text = _checked_text(text)
        await asyncio.to_thread(self.twins.get, patient_id)   # an unknown patient before any call
        summary = await self._summarize(text)
        return await self._record(patient_id, {"kind": "text", "text": text, **summary}, at_ms)

    async def add_voice(self, patient_id: str, wav: bytes, *, phrases: list[str] = (),
                        at_ms: int | None = None) -> dict:
        """A WAV voice note; ``phrases``, when given, are what the speech is expected to be (see
        TranscriptionConfig.phrases)."""
        _check_wav(wav)
        await asyncio.to_thread(self.twins.get, patient_id)
        transcript, model = await self._transcribe(wav, phrases)
        if not transcript.strip():
            raise NoteRefused("no speech was recognised in the voice note")
        summary = await self._summarize(transcript)
        return await self._record(patient_id, {"kind": "voice", "text": transcript, "transcriptionModel": model,
                                               **summary}, at_ms)

    async def _summarize(self, text: str) -> dict:
        request = text_pb2.SummarizeRequest(text=text, method=text_pb2.SUMMARY_METHOD_EXTRACTIVE,
                                            max_sentences=SUMMARY_SENTENCES)
        reply = await _call(self.text.Summarize(request, timeout=self.timeout_s), "text")
        return {"summary": reply.summary, "summaryModel": patients.model_record(reply.model)}

    async def _transcribe(self, wav: bytes, phrases) -> tuple[str, dict]:
        config = audio_pb2.TranscriptionConfig(format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_WAV),
                                               phrases=list(phrases))

        async def requests():
            yield audio_pb2.TranscribeRequest(config=config)
            for start in range(0, len(wav), AUDIO_CHUNK):
                yield audio_pb2.TranscribeRequest(audio=wav[start:start + AUDIO_CHUNK])

        final, model = [], None
        try:
            async for reply in self.audio.Transcribe(requests(), timeout=self.timeout_s):
                if reply.is_final and reply.text:
                    final.append(reply.text)
                model = reply.model if reply.model.name else model
        except grpc.aio.AioRpcError as error:
            raise _translated(error, "audio") from None
        return " ".join(final), patients.model_record(model) if model else {}

    async def _record(self, patient_id: str, note: dict, at_ms: int | None) -> dict:
        note_id = patients.new_id("N")
        entry = {"atMs": at_ms or now_ms(), **note}
        await asyncio.to_thread(self.twins.modify, patient_id,
                                {"features": {patients.NOTES: {"properties": {"items": {note_id: entry}}}}},
                                kind="note")
        return {"noteId": note_id, **entry}


async def _call(call, service: str):
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        raise _translated(error, service) from None


def _translated(error: grpc.aio.AioRpcError, service: str) -> Exception:
    if error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED):
        return NoteRefused(f"the {service} service refused the note: {error.details()}", bad_request_of(error))
    return NoteServiceDown(f"the {service} service is unavailable ({error.code().name}); try again")


def _checked_text(text: str) -> str:
    text = (text or "").strip()
    if not text:
        raise NoteRefused("the note is empty")
    if len(text) > MAX_NOTE_CHARS:
        raise NoteRefused(f"the note has {len(text)} characters; at most {MAX_NOTE_CHARS}")
    return text


def _check_wav(data: bytes) -> None:
    if not data:
        raise NoteRefused("the voice note is empty: send a WAV file as the request body")
    if len(data) > MAX_VOICE_BYTES:
        raise NoteRefused(f"the voice note is {len(data)} bytes; at most {MAX_VOICE_BYTES}")
    try:
        with wave.open(io.BytesIO(data)) as clip:
            clip.getparams()
    except (wave.Error, EOFError) as error:
        raise NoteRefused(f"the voice note is not a WAV file ({error})") from None
