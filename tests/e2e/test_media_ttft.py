"""A streamed transcription, speech (``stream_format: sse``) and image have a time to first
token, as a chat stream has: in aigw_time_to_first_token_seconds and the access line's
ttft_ms (real ``aigw serve``, the shipped echo routes, the official openai SDK)."""

from __future__ import annotations

import httpx
import openai
import pytest

from ..conftest import DEV_KEY, metric_sample
from .server import Server

pytestmark = pytest.mark.e2e


def test_streamed_media_answers_have_a_time_to_first_token(server: Server) -> None:
    """They had none: a stream's whole duration is left out of HighLatency (it lasts as
    long as the model writes), so a route whose streamed transcriptions, speech or
    images waited 30 s for their first event was in no latency alert or panel."""
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=DEV_KEY, max_retries=0)
    ids = {}
    heard = client.audio.transcriptions.with_raw_response.create(
        model="transcribe", file=("a.mp3", b"\xff" * 16000), stream=True)
    list(heard.parse())
    ids["transcribe"] = heard.headers["x-request-id"]
    drawn = client.images.with_raw_response.generate(model="images", prompt="a cat",
                                                     stream=True, partial_images=1)
    list(drawn.parse())
    ids["images"] = drawn.headers["x-request-id"]
    with client.audio.speech.with_streaming_response.create(
            model="speech", input="hello", voice="alloy", stream_format="sse") as spoken:
        spoken.read()
        ids["speech"] = spoken.headers["x-request-id"]
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    for route, request_id in ids.items():
        assert metric_sample(metrics, "aigw_time_to_first_token_seconds_count", route=route,
                             deployment=f"echo-{'image' if route == 'images' else route}",
                             provider="local") == 1, route
        line = server.written_access_line(request_id)
        assert line["stream"] is True and line["ttft_ms"] is not None, line
        assert 0 < line["ttft_ms"] <= line["latency_ms"], line

