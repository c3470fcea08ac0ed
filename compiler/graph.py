"""What runs: the frozen routing graph, the only thing the runtime reads.

Every name is already a reference, every default already applied, every secret
already resolved (or its absence recorded as a reason). Nothing here is optional
in the sense of "decide later": the runtime only looks things up.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

from .diagnostics import Diagnostic
from .guardrail_graph import RouteGuardrails
from .pipeline_graph import Pipeline as Pipeline

if TYPE_CHECKING:
    from .authorization import Authorization


class TargetKind(StrEnum):
    GROUP = "group"
    DEPLOYMENT = "deployment"
    PIPELINE = "pipeline"


@dataclass(frozen=True, slots=True)
class Settings:
    store: str
    max_request_bytes: int
    max_audio_upload_bytes: int
    max_image_upload_bytes: int
    hide_policy_ids: bool
    log_level: Literal["debug", "info", "warning", "error"]
    store_failure: Literal["fail_closed", "fail_open"]
    reservation_ttl_s: float
    stop_streams_over_budget: bool
    user_header: str
    ledger_sync: Literal["full", "normal"]
    execution_lease_s: float = 30.0
    execution_capacity: int = 256
    cache_max_entries: int = 10_000
    cache_max_bytes: int = 128 << 20
    cache_max_entry_bytes: int = 1 << 20
    execution_retention_s: float = 30 * 86400.0
    store_outbox: str = "aigw-outbox.sqlite"
    unsaved_dir: str = "aigw-unsaved"
    metrics_access: Literal["open", "admin"] = "open"
    body_read_timeout_s: float = 60.0
    max_request_json_containers: int = 50_000
    ledger_retention_days: int | None = None
    responses_ttl_s: float = 30 * 86400.0
    responses_max_bytes: int = 4 << 20
    responses_chain_max_depth: int = 1000
    responses_chain_max_bytes: int = 16 << 20
    conversations_max_items: int = 10_000
    files_dir: str = "aigw-files"
    files_max_bytes: int = 200 << 20
    batch_output_retention_s: int = 30 * 86_400
    batch_max_lines: int = 50_000
    batch_concurrency: int = 4
    batches_concurrency: int = 8
    redis_namespace: str = "aigw"
    max_passthrough_bytes: int = 512 << 20
    realtime_max_session_s: float = 3600.0
    websocket_ping_interval_s: float | None = 20.0
    websocket_max_message_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Quota:
    """Rate limits, requests in flight and a budget of one subject; None means unlimited."""

    rpm: int | None = None
    tpm: int | None = None
    budget: float | None = None
    period: Literal["day", "month", "total"] = "month"
    max_parallel: int | None = None

    @property
    def unlimited(self) -> bool:
        return (self.rpm is None and self.tpm is None and self.budget is None
                and self.max_parallel is None)


@dataclass(frozen=True, slots=True)
class Provider:
    """An upstream API. ``disabled_reason`` says why it cannot serve (e.g. an unset key)."""

    name: str
    type: str
    base_url: str | None
    api_version: str | None
    timeout_s: float
    max_connections: int
    headers: Mapping[str, str]
    disabled_reason: str | None
    api_key: str | None = field(default=None, repr=False)
    # The most bytes read of one answer, or of one line of a stream (max_response_mb).
    max_response_bytes: int = 64 << 20
    # Simulated latency (echo only): milliseconds before the first token and per token.
    first_token_ms: float = 0.0
    per_token_ms: float = 0.0
    # Cloud platforms: the AWS region (bedrock); the Google Cloud project, location,
    # service-account file (an absolute path, or None for default credentials) and the
    # model publisher if fixed (vertex).
    region: str | None = None
    project: str | None = None
    location: str | None = None
    credentials_file: str | None = None
    publisher: str | None = None
    # vLLM: its Prometheus metrics (queue, KV cache) and how often they are read.
    metrics_url: str | None = None
    metrics_interval_s: float = 2.0

    @property
    def enabled(self) -> bool:
        return self.disabled_reason is None


@dataclass(frozen=True, slots=True)
class Price:
    """Currency units per million tokens. Prompt tokens the provider read from its prompt
    cache, or wrote to it, are input tokens priced ``cache_read`` and ``cache_write``
    (the input price where the config names none). A rerank call's search units (Cohere's
    billing unit) are priced ``search_unit`` each; generated images ``image`` each, or
    ``image_by_size`` where it names their size (DALL-E's prices differ by size); a
    transcription's audio ``minute`` each, a speech call's input ``character`` each. Audio
    tokens (of a chat's, a response's or a Realtime response's input and output tokens)
    are priced ``audio_input`` (those not read from the cache) and ``audio_output``.

    >>> Price(3.0, 15.0, 0.3, 3.75).cost(1_000_000, 0, cache_read_tokens=600_000)
    1.38
    """

    input: float
    output: float
    cache_read: float
    cache_write: float
    search_unit: float = 0.0
    image: float = 0.0
    image_by_size: tuple[tuple[str, float], ...] = ()  # (size, price), sorted by size
    minute: float = 0.0
    character: float = 0.0
    audio_input: float = 0.0
    audio_output: float = 0.0

    @property
    def per_1k_search_units(self) -> float:
        """The search-unit price as the config writes it (and Cedar's ``price`` shows it:
        a decimal keeps four places, too few for a price per unit)."""
        return round(self.search_unit * 1000, 9)

    def cost(self, input_tokens: int, output_tokens: int, cache_read_tokens: int = 0,
             cache_write_tokens: int = 0, search_units: int = 0, images: int = 0,
             image_size: str | None = None, audio_seconds: float = 0.0,
             characters: int = 0, audio_input_tokens: int = 0,
             audio_output_tokens: int = 0) -> float:
        """What a call cost; ``input_tokens`` counts the prompt's cached tokens too, as
        every adapter reports them (OpenAI's prompt_tokens does), and its fresh audio
        tokens (``audio_input_tokens``), as ``output_tokens`` counts the audio's."""
        fresh = max(0, input_tokens - cache_read_tokens - cache_write_tokens
                    - audio_input_tokens)
        text_out = max(0, output_tokens - audio_output_tokens)
        return ((fresh * self.input + cache_read_tokens * self.cache_read
                 + cache_write_tokens * self.cache_write + text_out * self.output
                 + audio_input_tokens * self.audio_input
                 + audio_output_tokens * self.audio_output)
                / 1_000_000 + search_units * self.search_unit
                + (images * self.image_price(image_size) if images else 0.0)
                + audio_seconds / 60 * self.minute + characters * self.character)

    def image_price(self, size: str | None) -> float:
        """One image of ``size``: its own price where one is given, else ``image``; where
        sizes alone are priced, the dearest of them, as it was held: an image of a size
        the table does not name (a request that named none, an answer's ``auto``) was
        billed nothing.

        >>> Price(0, 0, 0, 0, image=0.04, image_by_size=(("1792x1024", 0.08),)).image_price(
        ...     "1792x1024")
        0.08
        >>> Price(0, 0, 0, 0, image_by_size=(("1024x1024", 0.04), ("1792x1024", 0.08))
        ...       ).image_price(None)
        0.08
        """
        price = next((price for named, price in self.image_by_size if named == size), None)
        if price is not None:
            return price
        return self.image if self.image or not self.image_by_size else self.dearest_image(size)

    def prices_image(self, size: str) -> bool:
        """Whether an image of ``size`` has a price of its own here (or the one every size
        has: ``image``, or none priced at all, a token-billed model's); ``auto`` is the
        model's choice, billed at the size it answers."""
        return (size == "auto" or self.image > 0 or not self.image_by_size
                or any(named == size for named, _ in self.image_by_size))

    def dearest_image(self, size: str | None) -> float:
        """What one image is held at before the call: its size's price where it is
        priced, else the dearest (a size left to the model, ``auto``, may be any)."""
        if any(named == size for named, _ in self.image_by_size):
            return self.image_price(size)
        return max([self.image, *(price for _, price in self.image_by_size)])

    def most(self, input_tokens: int, output_tokens: int, audio_input_tokens: int = 0,
             audio_output: bool = False) -> float:
        """The most a call of this size can cost, however much of its prompt the provider's
        cache reads or writes: what budgets hold before the call. Of ``input_tokens``,
        ``audio_input_tokens`` are audio; with ``audio_output`` (a chat that asks for
        spoken answers) any output token may be audio, none known beforehand.

        >>> Price(2.5, 10.0, 1.25, 2.5, audio_input=40.0, audio_output=80.0).most(
        ...     1_000, 100, audio_input_tokens=600, audio_output=True)
        0.033
        """
        dearest = max(self.input, self.cache_read, self.cache_write)
        audio = min(audio_input_tokens, input_tokens)
        out = max(self.output, self.audio_output) if audio_output else self.output
        return ((input_tokens - audio) * dearest + audio * max(dearest, self.audio_input)
                + output_tokens * out) / 1_000_000


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """Open after ``consecutive_failures`` in a row, or a ``failure_rate`` over ``window_s``
    once the window holds ``min_requests``; probe once after ``cooldown_s``."""

    consecutive_failures: int
    failure_rate: float
    min_requests: int
    window_s: float
    cooldown_s: float


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int  # retries of one member on a retryable failure
    backoff_ms: float
    max_backoff_ms: float


@dataclass(frozen=True, slots=True)
class ServedServer:
    """A vLLM server the gateway starts for a deployment: how, and how it is checked.

    Two values are the same server: a reload that leaves one unchanged keeps it running.
    """

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]  # added to the gateway's own environment
    host: str  # where it listens (--host, --port)
    port: int
    health_url: str
    startup_timeout_s: float


@dataclass(frozen=True, slots=True)
class Deployment:
    name: str
    provider: Provider
    model: str
    kind: Literal["chat", "embeddings", "rerank", "image", "moderation", "transcription",
                  "speech", "realtime"]
    context_window: int
    max_output_tokens: int
    price: Price
    tags: tuple[str, ...]
    capabilities: frozenset[str]
    timeout_s: float  # per attempt
    rpm: int | None  # the upstream's own quota, if declared
    tpm: int | None
    breaker: BreakerPolicy
    serve: ServedServer | None = None  # started and supervised by ``aigw serve``
    # The parameters beyond those the gateway reads that may reach it; None: any.
    pass_params: frozenset[str] | None = None

    def output_cap(self, prompt_tokens: int, wanted: int | None) -> int:
        """The most one choice of a call can write: what the client asked for (else
        max_output_tokens), within max_output_tokens and what the context window has
        left after the prompt. The call is capped at it, and holds count it."""
        room = self.context_window - prompt_tokens
        return max(0, min(wanted or self.max_output_tokens, self.max_output_tokens, room))


@dataclass(frozen=True, slots=True)
class Group:
    """Members ordered by ``strategy``; fallback groups by the class of the last failure."""

    name: str
    strategy: str
    members: tuple[Deployment, ...]
    weights: tuple[int, ...]  # aligned with members
    fallbacks: tuple[str, ...]  # on any failure
    on_rate_limit: tuple[str, ...]
    on_context_window: tuple[str, ...]
    on_content_policy: tuple[str, ...]
    retry: RetryPolicy
    # It, or a group it falls back to however deep, orders by prefix_affinity: requests
    # routed through it need their conversation's prefix digest.
    wants_prefix: bool = False

    def falls_back_to(self) -> tuple[str, ...]:
        """Every group this one may fall back to, for whatever failure."""
        return (*self.fallbacks, *self.on_rate_limit, *self.on_context_window,
                *self.on_content_policy)


@dataclass(frozen=True, slots=True)
class SemanticCache:
    """A route cache's semantic lookup: last messages embedded by the route ``embeddings``
    (of at most ``max_prompt_tokens``), served at a cosine similarity of ``threshold``."""

    embeddings: str
    threshold: float
    max_prompt_tokens: int
    timeout_s: float


@dataclass(frozen=True, slots=True)
class RouteCache:
    """A route's response cache: answers live ``ttl_s``, shared within ``scope``;
    ``by_model``: its deployments are models of more than one id and the config does not
    say they are one model (``one_model``), so each model's answers are kept apart."""

    ttl_s: float
    scope: Literal["team", "key", "shared"]
    semantic: SemanticCache | None = None
    by_model: bool = False


@dataclass(frozen=True, slots=True)
class Route:
    """A public model name. ``candidates`` lists, in order, every deployment that may serve it:
    the target's members, then those of its fallback groups, each once."""

    name: str
    kind: TargetKind
    target: str
    candidates: tuple[Deployment, ...]
    description: str | None
    group: Group | None  # what serves it (a one-member group for a deployment); None: pipeline
    deadline_s: float
    max_attempts: int
    hedge_after_ms: float | None
    hedge_at_p95: bool
    cache: RouteCache | None = None
    guardrails: RouteGuardrails | None = None  # None: none, and no work per request


@dataclass(frozen=True, slots=True)
class Team:
    name: str
    quota: Quota
    per_user: Quota  # of each end user of the team's keys


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key the gateway accepts; only its sha256 digest is kept."""

    name: str
    team: Team | None
    admin: bool
    quota: Quota
    per_user: Quota  # of each end user of this key: its own, else its team's
    routes: frozenset[str] | None  # the routes it may call; None: all
    mcp_servers: frozenset[str] | None  # the MCP servers it may reach; None: all
    # None: its current ${ENV} secret is unset, and only its previous: secrets sign in
    sha256: str | None = field(repr=False)
    # per_user is the key's own (not its team's): its users have counters of their own
    own_per_user: bool = False
    # epoch seconds from which it is refused (401 key_expired); None: it does not expire
    expires_at: float | None = None
    passthrough: frozenset[str] | None = None  # the pass-throughs it may use; None: all
    # A caller signed in with a JWT: the issuer's name and the token's principal claim
    # (its Cedar principal is Subject::"<subject>" in Issuer::"<issuer>"); None for a key.
    issuer: str | None = None
    subject: str | None = None


@dataclass(frozen=True, slots=True)
class IssuerTeams:
    """How a claim picks a caller's team: the first of ``choices`` (claim value, team)
    whose value the token holds, else ``default`` (None: refused)."""

    claim: str
    choices: tuple[tuple[str, Team], ...]
    default: Team | None


@dataclass(frozen=True, slots=True)
class Issuer:
    """An identity provider whose JWTs sign callers in: a token whose ``iss`` is
    ``issuer``, signed with one of ``algorithms`` by a key from ``jwks_url`` (or
    ``jwks``, a JWKS as JSON text: the file ``jwks_file`` read, or the config's inline
    one), with an ``aud`` among ``audiences``. Its
    caller is named by ``principal_claim`` and has ``quota`` of its own."""

    name: str
    issuer: str
    audiences: tuple[str, ...]
    algorithms: tuple[str, ...]
    jwks_url: str | None
    jwks: str | None
    jwks_file: str | None
    team: Team | IssuerTeams | None
    principal_claim: str
    routes: frozenset[str] | None
    mcp_servers: frozenset[str] | None
    passthrough: frozenset[str] | None
    quota: Quota
    leeway_s: float
    jwks_max_age_s: float
    jwks_refetch_s: float


@dataclass(frozen=True, slots=True)
class PreviousSecret:
    """A secret ``key`` had before a rotation: accepted as that same key (its limits,
    budget, ledger name and Cedar principal) until ``until`` (epoch seconds; None: for
    as long as the config lists it)."""

    key: ApiKey
    until: float | None
    sha256: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class McpStdio:
    """How a stdio MCP server is run: ``command`` in ``cwd`` with ``env`` added to the few
    variables every program needs, one process a session, at most ``max_sessions``, each
    stopped after ``idle_timeout_s`` without a message."""

    command: tuple[str, ...]
    cwd: str
    idle_timeout_s: float
    max_sessions: int
    env: Mapping[str, str] = field(repr=False)


@dataclass(frozen=True, slots=True)
class McpSse:
    """How the sessions of a server speaking the HTTP+SSE transport (protocol 2024-11-05)
    are held: an event stream a session, at most ``max_sessions``, each closed after
    ``idle_timeout_s`` without a message."""

    idle_timeout_s: float
    max_sessions: int


@dataclass(frozen=True, slots=True)
class McpServer:
    """An upstream MCP server apps reach at ``/mcp/<name>``: streamable HTTP at ``url``;
    with ``sse``, the older HTTP+SSE transport at ``url`` (its SSE endpoint); or, with
    ``stdio``, a command the gateway runs (``url`` is then ``stdio://<name>``).

    ``tools`` None lets every tool through; otherwise only those named are listed and
    may be called. ``disabled_reason`` says why it cannot serve (an unset ${ENV})."""

    name: str
    url: str
    timeout_s: float
    tools: frozenset[str] | None
    disabled_reason: str | None
    headers: Mapping[str, str] = field(repr=False)
    stdio: McpStdio | None = None
    sse: McpSse | None = None

    def allows(self, tool: str) -> bool:
        return self.tools is None or tool in self.tools


@dataclass(frozen=True, slots=True)
class Passthrough:
    """A provider API apps reach raw at ``/passthrough/<name>/<path>``: a ``method`` of
    ``methods`` on a path ``paths`` match (compiled from the globs as written, which
    ``globs`` keeps for messages), sent to ``provider`` with its credentials. An answer's
    usage is billed at the price of the provider's deployment serving the model it
    names (``prices``: model id -> deployment), else as nothing."""

    name: str
    provider: Provider
    globs: tuple[str, ...]
    paths: re.Pattern[str]
    methods: frozenset[str]
    prices: Mapping[str, Deployment]
    hold_tokens: int  # what a POST whose body does not tell holds (runtime/passthrough_hold.py)

    def allows(self, path: str) -> bool:
        """Whether ``path`` (as sent, from its leading /) is one ``globs`` allows.

        >>> import re
        >>> Passthrough("p", None, (), re.compile(r"/v1/files(?:/.*)?"), frozenset(), {},
        ...             0).allows("/v1/files/file-1/content")  # type: ignore[arg-type]
        True
        """
        return self.paths.fullmatch(path) is not None


@dataclass(frozen=True, slots=True)
class Policy:
    """One Cedar policy with its annotations and where it was written."""

    id: str
    file: str
    line: int
    priority: int
    text: str


@dataclass(frozen=True, slots=True)
class Graph:
    """The compiled gateway. Built once by the compiler, swapped whole on reload."""

    fingerprint: str
    root: str
    settings: Settings
    providers: Mapping[str, Provider]
    deployments: Mapping[str, Deployment]
    groups: Mapping[str, Group]
    routes: Mapping[str, Route]
    teams: Mapping[str, Team]
    keys_by_sha256: Mapping[str, ApiKey]
    policies: tuple[Policy, ...]
    pipelines: Mapping[str, Pipeline]
    mcp_servers: Mapping[str, McpServer]
    warnings: tuple[Diagnostic, ...]
    authorization: Authorization  # the policy set, schema and static Cedar entities
    # Keys' earlier secrets during rotations, looked up only when keys_by_sha256 misses
    previous_by_sha256: Mapping[str, PreviousSecret]
    # Every key some secret signs in as (current or previous), by name: a key whose
    # current secret is unset is still its previous secrets' during a rotation
    keys_by_name: Mapping[str, ApiKey]
    passthrough: Mapping[str, Passthrough] = field(
        default_factory=lambda: MappingProxyType({}))
    # Identity providers by the iss their tokens carry (issuers:)
    issuers_by_iss: Mapping[str, Issuer] = field(default_factory=lambda: MappingProxyType({}))
