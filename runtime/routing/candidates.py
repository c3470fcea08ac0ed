"""Which members of a group can serve a request at all, decided before any upstream call.

A member is dropped, with the reason kept for the 4xx/503 message, the debug trace
and ``aigw route``, when its provider is disabled, it serves another endpoint (chat,
embeddings, rerank), it lacks a capability the request needs, its provider has a chat
API only and a /v1/completions request sets a parameter only a raw prompt has
(``suffix``, ``echo``, ``logprobs``, ``best_of``), the request asks for more output
than it writes (``max_output_tokens``), or the request cannot fit its context window (a
chat's prompt plus output; an embeddings call's longest input; a rerank call's query).
An ``Ask`` is what the attempt loop needs of a request, whichever endpoint it came to.

When no member fits, the error names what the client can change, as OpenAI's own
errors do: only a window too small is a 422 ``context_length_exceeded`` (apps trim
their history on it, which would never help with a missing capability); otherwise a
400 naming the parameter (``max_tokens``, ``tools``, ``messages`` for an image,
``response_format``...). Members dropped for different things: the window wins when
any member is too small only for the prompt (a shorter one lets that member serve),
then ``max_tokens`` (a smaller one would), then the first member's missing capability.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

from aigw.compiler.graph import Deployment, Group, Route

from ..chat_request import ChatRequest, TextChatRequest
from ..errors import BadRequest, ContextWindowExceeded, GatewayError
from ..providers.base import ChatAdapter
from ..providers.registry import COMPLETES_TEXT, COMPLETES_TOKEN_IDS, EMBEDS_TOKEN_IDS
from .state import RoutingState
from .strategies import Demand, order, prefix_digest


@dataclass(frozen=True, slots=True)
class Candidate:
    """A deployment that can take this request, with its adapter and output cap."""

    deployment: Deployment
    adapter: ChatAdapter
    max_output_tokens: int


WINDOW = "window"  # the prompt does not fit its context window (with the output asked for)
OUTPUT = "output"  # max_tokens is past its max_output_tokens, or alone fills its window
KIND = "kind"  # it serves another endpoint (chat, embeddings, rerank, image, moderation)
TOKEN_IDS = "token_ids"  # its provider's embeddings take text, not token ids
PARAM = "param:"  # + a parameter its pass_params leave out


@dataclass(frozen=True, slots=True)
class Dropped:
    deployment: str
    reason: str
    unfit: bool  # True: the request does not fit it (4xx); False: it is unavailable (503)
    # What of the request an unfit member cannot take: WINDOW, OUTPUT, KIND, TOKEN_IDS,
    # PARAM + a parameter, or a capability ("tools", "vision", ...). Unused when it is
    # unavailable.
    misfit: str = WINDOW
    # For an unavailable member: seconds until it may serve again (its circuit's
    # cooldown), when that is known.
    retry_after: float | None = None


# The request parameter that asks for each capability, for the 400 when none has it.
_CAPABILITY_PARAMS: Mapping[str, str] = MappingProxyType({
    "tools": "tools", "vision": "messages", "json_schema": "response_format", "streaming": "stream",
})


def required_capabilities(request: ChatRequest) -> frozenset[str]:
    needs = set()
    if request.stream:
        needs.add("streaming")
    if request.tools:
        needs.add("tools")
    response_format = (request.model_extra or {}).get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        needs.add("json_schema")
    for message in request.messages:
        if isinstance(message.content, list) and any(
            part.type in ("image_url", "input_image") for part in message.content
        ):
            needs.add("vision")
    return frozenset(needs)


def eligible(
    group: Group,
    adapters: Mapping[str, ChatAdapter],
    request: ChatRequest,
    prompt_tokens: int,
    text_only: tuple[str, ...] = (),
    token_ids: bool = False,
) -> tuple[list[Candidate], list[Dropped]]:
    """Split ``group``'s members into those that can serve ``request`` and those that cannot.
    ``text_only``: the raw-prompt parameters a /v1/completions request sets (suffix,
    echo...), which only a provider in ``COMPLETES_TEXT`` can honour; ``token_ids``:
    its prompt is token ids, which only one in ``COMPLETES_TOKEN_IDS`` takes."""
    needs = required_capabilities(request)
    wanted = request.output_limit
    extras = request.model_extra
    fit: list[Candidate] = []
    dropped: list[Dropped] = []
    for deployment in group.members:
        adapter = adapters.get(deployment.provider.name)
        if deployment.kind != "chat":
            dropped.append(Dropped(deployment.name, f"is {kind_name(deployment)}", True, KIND))
            continue
        if adapter is None:
            reason = deployment.provider.disabled_reason or "its provider has no adapter"
            dropped.append(Dropped(deployment.name, f"is disabled: {reason}", False))
            continue
        if token_ids and deployment.provider.type not in COMPLETES_TOKEN_IDS:
            dropped.append(Dropped(deployment.name, f"has a chat API only, which takes no "
                                   f"token ids for 'prompt' (its provider is "
                                   f"{deployment.provider.type})", True, PARAM + "prompt"))
            continue
        if text_only and deployment.provider.type not in COMPLETES_TEXT:
            dropped.append(Dropped(deployment.name, f"has a chat API only, which takes no "
                                   f"'{text_only[0]}' (its provider is {deployment.provider.type})",
                                   True, PARAM + text_only[0]))
            continue
        missing = needs - deployment.capabilities
        if missing:
            lacks = sorted(missing)
            dropped.append(Dropped(deployment.name, f"lacks {', '.join(lacks)}", True, lacks[0]))
            continue
        if extras and deployment.pass_params is not None:
            refused = [name for name in extras if name not in deployment.pass_params]
            if refused:
                dropped.append(Dropped(deployment.name, f"is not configured to take "
                                       f"{', '.join(refused)}", True, PARAM + refused[0]))
                continue
        if wanted is not None and wanted >= min(deployment.max_output_tokens + 1,
                                                deployment.context_window):
            # No shorter prompt would make room: it is max_tokens the client must lower.
            dropped.append(Dropped(
                deployment.name, f"writes at most {deployment.max_output_tokens} tokens "
                f"(a {deployment.context_window}-token window); the request asks for "
                f"{wanted}", True, OUTPUT))
            continue
        room = deployment.context_window - prompt_tokens
        if room < 1 or (wanted is not None and wanted > room):
            dropped.append(Dropped(
                deployment.name,
                f"holds {deployment.context_window} tokens (at most "
                f"{deployment.max_output_tokens} out); the request needs {prompt_tokens} in + "
                f"{wanted or 1} out",
                True,
            ))
            continue
        fit.append(Candidate(deployment, adapter, deployment.output_cap(prompt_tokens, wanted)))
    return fit, dropped


def kind_name(deployment: Deployment) -> str:
    """What a deployment is, for a request of another kind: 'a chat model', ..."""
    return {"chat": "a chat model", "embeddings": "an embeddings model",
            "rerank": "a rerank model", "image": "an image model",
            "moderation": "a moderation model", "transcription": "a transcription model",
            "speech": "a speech model", "realtime": "a realtime model"}[deployment.kind]


def order_candidates(
    group: Group, candidates: list[Candidate], state: RoutingState, demand: Demand
) -> list[Candidate]:
    """``candidates`` in the order of ``group``'s strategy."""
    by_name = {candidate.deployment.name: candidate for candidate in candidates}
    ranked = order(group, [candidate.deployment for candidate in candidates], state, demand)
    return [by_name[deployment.name] for deployment in ranked]


class Ask(Protocol):
    """One request as the attempt loop sees it: which of a group's members can serve it,
    what the strategies weigh, and the error when every member was unfit for it."""

    @property
    def demand(self) -> Demand: ...

    @property
    def window_tokens(self) -> int:
        """Tokens that must fit one deployment's context window."""
        ...

    def eligible(self, group: Group) -> tuple[list[Candidate], list[Dropped]]: ...

    def unfit(self, route: str, dropped: Sequence[Dropped]) -> GatewayError: ...


class ChatAsk:
    """A chat completion (from /v1/chat/completions, /v1/messages or a pipeline's step)."""

    __slots__ = ("adapters", "demand", "request", "text_only", "token_ids", "window_tokens")

    def __init__(self, adapters: Mapping[str, ChatAdapter], route: Route, request: ChatRequest,
                 prompt_tokens: int) -> None:
        self.adapters = adapters
        self.request = request
        text = request if isinstance(request, TextChatRequest) else None
        self.text_only = text.completion.asked() if text is not None else ()
        self.token_ids = text is not None and text.prompt_ids is not None
        self.window_tokens = prompt_tokens
        self.demand = Demand(prompt_tokens, request.output_limit, request.stream,
                             chat_prefix(route, request))

    def eligible(self, group: Group) -> tuple[list[Candidate], list[Dropped]]:
        return eligible(group, self.adapters, self.request, self.window_tokens, self.text_only,
                        self.token_ids)

    def unfit(self, route: str, dropped: Sequence[Dropped]) -> GatewayError:
        reasons = "; ".join(f"{d.deployment} {d.reason}" for d in dropped)
        message = f"No deployment of '{route}' can serve this request: {reasons}."
        misfits = [d.misfit for d in dropped if d.unfit]
        if WINDOW in misfits:
            return ContextWindowExceeded(message, param="messages")
        if OUTPUT in misfits:
            cap = "max_completion_tokens" if self.request.max_completion_tokens else "max_tokens"
            return BadRequest(message, param=cap)
        first = misfits[0]
        if first.startswith(PARAM):
            return BadRequest(message, param=first[len(PARAM):])
        return BadRequest(message, param=_CAPABILITY_PARAMS.get(first, "model"))


class EmbeddingAsk:
    """An embeddings call: each input must fit a member's window on its own (``longest``
    is the longest's tokens), and token-id inputs go only to providers that take them."""

    __slots__ = ("adapters", "demand", "token_ids", "window_tokens")

    def __init__(self, adapters: Mapping[str, ChatAdapter], prompt_tokens: int, longest: int,
                 token_ids: bool) -> None:
        self.adapters = adapters
        self.window_tokens = longest
        self.token_ids = token_ids
        self.demand = Demand(prompt_tokens, 0, False)  # no output, no stream

    def eligible(self, group: Group) -> tuple[list[Candidate], list[Dropped]]:
        return _eligible_of_kind(group, self.adapters, "embeddings", self.window_tokens,
                                 "takes inputs of at most {window} tokens; one has {tokens}",
                                 self.token_ids)

    def unfit(self, route: str, dropped: Sequence[Dropped]) -> GatewayError:
        reasons = "; ".join(f"{d.deployment} {d.reason}" for d in dropped)
        if all(d.misfit == TOKEN_IDS for d in dropped if d.unfit):
            return BadRequest(f"'input' holds token ids; no deployment of '{route}' takes "
                              f"them ({reasons}): send the text instead.", param="input")
        return ContextWindowExceeded(
            f"No deployment of '{route}' can take this input: {reasons}.", param="input")


class RerankAsk:
    """A rerank call: its query must fit a member's window (``query_tokens``); the
    documents are the provider's to cut (Cohere truncates each at max_tokens_per_doc)."""

    __slots__ = ("adapters", "demand", "window_tokens")

    def __init__(self, adapters: Mapping[str, ChatAdapter], prompt_tokens: int,
                 query_tokens: int, search_units: int) -> None:
        self.adapters = adapters
        self.window_tokens = query_tokens
        # No output, no stream; search units, for a strategy that weighs cost.
        self.demand = Demand(prompt_tokens, 0, False, search_units=search_units)

    def eligible(self, group: Group) -> tuple[list[Candidate], list[Dropped]]:
        return _eligible_of_kind(group, self.adapters, "rerank", self.window_tokens,
                                 "takes a query of at most {window} tokens; this one has "
                                 "{tokens}")

    def unfit(self, route: str, dropped: Sequence[Dropped]) -> GatewayError:
        reasons = "; ".join(f"{d.deployment} {d.reason}" for d in dropped)
        return ContextWindowExceeded(
            f"No deployment of '{route}' can take this query: {reasons}.", param="query")


class AudioAsk:
    """A transcription or speech call: any enabled member of its kind fits (an upload or
    a speech's input is no prompt to fit a context window; OpenAI caps both itself)."""

    __slots__ = ("adapters", "demand", "kind", "window_tokens")

    def __init__(self, adapters: Mapping[str, ChatAdapter], kind: str,
                 prompt_tokens: int) -> None:
        self.adapters = adapters
        self.kind = kind
        self.window_tokens = 0  # nothing to fit
        self.demand = Demand(prompt_tokens, 0, False)

    def eligible(self, group: Group) -> tuple[list[Candidate], list[Dropped]]:
        return _eligible_of_kind(group, self.adapters, self.kind, 0, "")  # no window to fit

    def unfit(self, route: str, dropped: Sequence[Dropped]) -> GatewayError:
        reasons = "; ".join(f"{d.deployment} {d.reason}" for d in dropped)
        return BadRequest(f"No deployment of '{route}' serves {self.kind}: {reasons}.",
                          param="model")


class InputAsk:
    """An image or moderation call: members of its ``kind`` whose window takes its input
    (``window_tokens``: the prompt, the longest text to moderate); the 422 names
    ``param``."""

    __slots__ = ("adapters", "demand", "kind", "param", "window_tokens")

    def __init__(self, adapters: Mapping[str, ChatAdapter], kind: str, prompt_tokens: int,
                 window_tokens: int, param: str) -> None:
        self.adapters = adapters
        self.kind = kind
        self.window_tokens = window_tokens
        self.param = param
        self.demand = Demand(prompt_tokens, 0, False)  # no output tokens to weigh, no stream

    def eligible(self, group: Group) -> tuple[list[Candidate], list[Dropped]]:
        return _eligible_of_kind(
            group, self.adapters, self.kind, self.window_tokens,
            f"takes {_article(self.param)} {self.param} of at most {{window}} tokens; "
            "this one has {tokens}")

    def unfit(self, route: str, dropped: Sequence[Dropped]) -> GatewayError:
        reasons = "; ".join(f"{d.deployment} {d.reason}" for d in dropped)
        return ContextWindowExceeded(
            f"No deployment of '{route}' can take this {self.param}: {reasons}.",
            param=self.param)


def _article(noun: str) -> str:
    return "an" if noun[:1] in "aeiou" else "a"


def _eligible_of_kind(group: Group, adapters: Mapping[str, ChatAdapter], kind: str,
                      window_tokens: int, too_long: str, token_ids: bool = False,
                      ) -> tuple[list[Candidate], list[Dropped]]:
    """The members of ``group`` that serve ``kind`` (embeddings, rerank: no output, no
    capabilities) and take ``window_tokens``; ``too_long`` words a window too small
    (``{window}``, ``{tokens}``). ``token_ids``: the input is token ids, which only an
    ``EMBEDS_TOKEN_IDS`` provider takes. Chat has its own ``eligible``, the hot path."""
    fit: list[Candidate] = []
    dropped: list[Dropped] = []
    for deployment in group.members:
        adapter = adapters.get(deployment.provider.name)
        if deployment.kind != kind:
            dropped.append(Dropped(deployment.name, f"is {kind_name(deployment)}", True, KIND))
        elif adapter is None:
            reason = deployment.provider.disabled_reason or "its provider has no adapter"
            dropped.append(Dropped(deployment.name, f"is disabled: {reason}", False))
        elif token_ids and deployment.provider.type not in EMBEDS_TOKEN_IDS:
            dropped.append(Dropped(deployment.name, "takes text, not token ids", True,
                                   TOKEN_IDS))
        elif window_tokens > deployment.context_window:
            dropped.append(Dropped(deployment.name, too_long.format(
                window=deployment.context_window, tokens=window_tokens), True))
        else:
            fit.append(Candidate(deployment, adapter, 0))
    return fit, dropped


def chat_prefix(route: Route, request: ChatRequest) -> int:
    """The conversation's prefix digest, when a group the route may reach wants it."""
    assert route.group is not None
    if not route.group.wants_prefix:
        return 0
    # What every turn of a conversation starts with: its system (or developer) messages
    # and its first user message.
    start: list[str] = []
    for message in request.messages:
        start.append(message.text())
        if message.role not in ("system", "developer"):
            break
    return prefix_digest(start)
