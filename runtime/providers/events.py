"""An answer in server-sent events, passed on to the client as it comes (a streamed
transcription, speech as events, a streamed image), and the seam of the adapters that
stream images (``ImageEventsAdapter``: OpenAI's API and echo's)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

from aigw.compiler.graph import Deployment, Provider

from ..errors import BadRequest, UpstreamServerError
from .base import ImageCall, Usage, reported_count


@dataclass(frozen=True, slots=True)
class EventStream:
    """An answer in server-sent events being read (a streamed transcription, speech with
    ``stream_format: "sse"``): its status checked and its ``first`` event read, so a
    member that fails is failed over before anything reached the client; the ``rest`` as
    they come, each ``(event name, data)``. Its last event (of type ``done``) reports what
    it is billed; ``usage``, until then: the estimate a stream cut before it is billed."""

    first: tuple[str, str]
    rest: AsyncIterator[tuple[str, str]]
    usage: Usage
    done: str  # transcript.text.done, speech.audio.done

    def billed(self, data: str, provider: Provider) -> Usage | None:
        """What ``data`` reports, if it is the ``done`` event: its ``usage``'s tokens
        (``input_tokens``, ``output_tokens``), the estimate's where it reports none. Only
        an event that names ``done`` is parsed, not each chunk of audio."""
        if self.done not in data:
            return None
        try:
            document = json.loads(data)
        except ValueError:
            return None  # not JSON: passed on, and not the last event
        if not isinstance(document, dict) or document.get("type") != self.done:
            return None
        usage = document.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        prompt = reported_count(usage.get("input_tokens"), provider, "input tokens")
        output = reported_count(usage.get("output_tokens"), provider, "output tokens")
        size = document.get("size")  # an image's, billed at the size it came in
        return replace(self.usage,
                       prompt_tokens=self.usage.prompt_tokens if prompt is None else prompt,
                       completion_tokens=self.usage.completion_tokens if output is None
                       else output,
                       image_size=size if isinstance(size, str) and self.usage.images
                       else self.usage.image_size)

    def cut(self) -> None:
        """Let the upstream's answer go, unread (a hedge's loser). Its generator does not
        await as it closes, so the task that closes it ends in its first step."""
        asyncio.get_running_loop().create_task(self.aclose())

    async def aclose(self) -> None:
        """Let the upstream's answer go, whether or not it was read to its end."""
        close = getattr(self.rest, "aclose", None)  # an async generator's, as adapters give
        if close is not None:
            await close()


async def opened(events: AsyncIterator[tuple[str, str]], usage: Usage, done: str,
                 provider: Provider) -> EventStream:
    """``events`` as an ``EventStream``, once their first has come."""
    try:
        first = await anext(events)
    except StopAsyncIteration:
        raise UpstreamServerError(
            f"provider '{provider.name}' answered no events where a stream was asked for "
            "(does its model stream?)", provider=provider.name) from None
    return EventStream(first, events, usage, done)


@runtime_checkable
class ImageEventsAdapter(Protocol):
    async def generate_image_events(self, call: ImageCall) -> EventStream:
        """The image as ``image_generation.partial_image`` events (``partial_images`` of
        them), then ``image_generation.completed`` with its usage (``stream: true``)."""
        ...


def image_events_adapter(adapter: object, deployment: Deployment) -> ImageEventsAdapter:
    """``adapter`` as the seam of streamed images; a provider without one (Gemini,
    Bedrock: whole images only) refuses the request, as OpenAI refuses a model that does
    not stream."""
    if not isinstance(adapter, ImageEventsAdapter):
        raise BadRequest(
            f"Deployment '{deployment.name}' is on provider '{deployment.provider.name}' "
            f"({deployment.provider.type}), which does not stream images: leave 'stream' "
            "out to get them whole.", param="stream")
    return adapter


def image_estimate(call: ImageCall) -> Usage:
    """What a streamed image is held for, and billed if its stream is cut: the prompt,
    the deployment's most output tokens, one image of the asked size."""
    return Usage(call.prompt_tokens, call.deployment.max_output_tokens, images=1,
                 image_size=call.size)
