"""What the user wrote: pydantic models of gateway.yaml, every field checked, unknown keys rejected.

These are the ``XSpec`` models of STYLE.md. They describe the YAML and nothing else:
names are still strings, ``${ENV}`` references are still text. ``link`` resolves
them; the runtime never sees a spec. What only gateway.yaml itself may hold (its version
and settings) is in ``gateway_spec``.
"""

from __future__ import annotations

import datetime
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
ENV_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # what ${NAME} and env: take

ProviderType = Literal[
    "echo", "openai", "openai_compatible", "azure_openai", "anthropic", "gemini", "vllm",
    "bedrock", "vertex", "cohere",
]
Capability = Literal["tools", "vision", "json_schema", "streaming"]
Strategy = Literal[
    "priority", "weighted", "round_robin", "least_busy", "lowest_latency", "lowest_cost", "usage",
    "prefix_affinity",
]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
# The limits store counts money in billionths and tokens as integers, and Redis' Lua
# numbers are doubles, exact only up to 2**53: so no budget or limit may pass these.
MAX_BUDGET = (2**53 - 1) // 1_000_000_000  # 9,007,199 in the price table's currency
MAX_LIMIT = 2**53 - 1


class Spec(BaseModel):
    """Base of every spec: strict types, unknown keys are errors, nothing mutable after."""

    # No NaN or infinity (.inf, or 1e999, which YAML reads as infinity): a price of it
    # made every request's cost infinite.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class CircuitBreakerSpec(Spec):
    """When to stop sending to a failing deployment, and when to probe it again."""

    consecutive_failures: PositiveInt = Field(5, description="Open after this many in a row.")
    failure_rate: Annotated[float, Field(gt=0, le=1)] = Field(
        0.5, description="Open when this share of the window's requests failed..."
    )
    min_requests: PositiveInt = Field(10, description="...and the window holds at least this many.")
    window_s: Annotated[float, Field(gt=0)] = 60.0
    cooldown_s: Annotated[float, Field(gt=0)] = Field(
        30.0, description="Time open before a single probe request is let through."
    )


class LatencySpec(Spec):
    """Simulated latency of an echo provider, for demos, load tests and reload drills."""

    first_token_ms: Annotated[float, Field(ge=0)] = 0.0
    per_token_ms: Annotated[float, Field(ge=0)] = 0.0


class LimitsSpec(Spec):
    rpm: Annotated[int, Field(gt=0, le=MAX_LIMIT)] | None = Field(
        None, description="Requests per minute.")
    tpm: Annotated[int, Field(gt=0, le=MAX_LIMIT)] | None = Field(
        None, description="Tokens (in + out) per minute.")


class SubjectLimitsSpec(LimitsSpec):
    """A key's or a team's limits: rates, and how many of its requests may run at once."""

    max_parallel: Annotated[int, Field(gt=0, le=MAX_LIMIT)] | None = Field(
        None,
        description="Requests in flight at once (a stream until its last byte, or until its "
        "client leaves); one more gets a 429. Shared by the replicas on one Redis store.",
    )


class ProviderSpec(Spec):
    """An upstream API and how to reach it; credentials only as ${ENV_VAR} references."""

    type: ProviderType
    base_url: str | None = Field(None, description="Root URL of the API, e.g. http://gpu:8000/v1.")
    api_key: str | None = Field(None, description="Credential as ${ENV_VAR}; never a literal key.")
    api_version: str | None = Field(None, description="API version (azure_openai).")
    timeout_s: Annotated[float, Field(gt=0)] = Field(600.0, description="Per-attempt timeout.")
    max_connections: PositiveInt = Field(100, description="Pooled connections to this provider.")
    max_response_mb: Annotated[float, Field(gt=0, le=4096)] = Field(
        64.0,
        description="The largest answer taken from this provider, and the longest line of "
        "a stream, in MiB; a larger one fails the attempt (upstream_response_too_large) "
        "rather than fill the gateway's memory. Raise it for large embeddings batches.",
    )
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers.")
    latency: LatencySpec | None = Field(None, description="Only for type echo: simulated latency.")
    region: str | None = Field(None, description="AWS region (bedrock), e.g. us-east-1.")
    project: str | None = Field(None, description="Google Cloud project id (vertex).")
    location: str | None = Field(None, description="Vertex AI location (vertex), e.g. us-east5.")
    credentials_file: str | None = Field(
        None,
        description="Service-account JSON file (vertex), as ${ENV_VAR} or a path relative to "
        "the gateway directory; without it, Google's application default credentials.",
    )
    metrics_url: str | None = Field(
        None,
        description="Type vllm: the server's Prometheus metrics, read for its queue and KV "
        "cache use (default: base_url without its /v1, then /metrics).",
    )
    metrics_interval_s: Annotated[float, Field(ge=0.1, le=300)] = Field(
        2.0, description="Type vllm: how often metrics_url is read.")
    publisher: Literal["google", "anthropic"] | None = Field(
        None,
        description="Model family on vertex; by default anthropic for model ids starting "
        "with 'claude', google for the others.",
    )


class AgentSpec(Spec):
    """A remote agent that speaks A2A (its JSON-RPC binding), for ``agent`` pipeline steps;
    credentials only as ${ENV_VAR} references, as a provider's."""

    url: str = Field(description="The agent's card (https://host/.well-known/agent-card.json), "
                     "whose JSONRPC interface is then called, or its JSON-RPC endpoint.")
    api_key: str | None = Field(
        None, description="Sent as Authorization: Bearer; as ${ENV_VAR}, never a literal key.")
    headers: dict[str, str] = Field(
        default_factory=dict, description="Extra request headers; secrets as ${ENV_VAR}.")
    a2a_version: Literal["1.0", "0.3", "0.2"] | None = Field(
        None, description="The A2A version the agent speaks, Major.Minor: '1.0', '0.3' or "
        "'0.2' (0.2.0 to 0.2.6). Default: as its card says, the newest where it offers "
        "several; an agent whose url is its JSON-RPC endpoint has no card to say: 1.0.")
    description: str | None = None

    @field_validator("a2a_version", mode="before",
                     json_schema_input_type=Literal["1.0", "0.3", "0.2", 1.0, 0.3, 0.2] | None)
    @classmethod
    def _version_as_written(cls, value: object) -> object:
        # YAML reads an unquoted 0.3 or 1.0 (or 1) as a number: it means the version it
        # spells. JSON Schema holds 1 and 1.0 the same, as this does; true is no number.
        if isinstance(value, int | float) and not isinstance(value, bool):
            return repr(float(value))
        return value


class PriceSpec(Spec):
    """Price in currency units per million tokens (and, for rerank, per search unit; for
    images, per image)."""

    input: NonNegativeFloat = 0.0
    output: NonNegativeFloat = 0.0
    cache_read: NonNegativeFloat | None = Field(
        None, description="Prompt tokens read from the provider's prompt cache (OpenAI's "
        "cached_tokens, Anthropic's cache_read_input_tokens, Gemini's cachedContentTokenCount, "
        "Bedrock's cacheReadInputTokens); default: input.")
    cache_write: NonNegativeFloat | None = Field(
        None, description="Prompt tokens written to the provider's prompt cache (Anthropic's "
        "cache_creation_input_tokens, Bedrock's cacheWriteInputTokens); default: input.")
    per_1k_search_units: NonNegativeFloat = Field(
        0.0, description="Rerank deployments: price per 1,000 search units, as Cohere bills "
        "rerank (a search unit is one query over up to 100 documents). The provider's count "
        "is billed where it reports one, else the gateway's (documents / 100, rounded up). "
        "Token-billed rerankers (Jina, a vLLM server) price input instead.")
    per_image: NonNegativeFloat = Field(
        0.0, description="Image deployments: price per image generated (DALL-E's way of "
        "billing), for a size per_image_by_size does not name. Token-billed image models "
        "(gpt-image-1) price input and output instead; a deployment may have both.")
    per_image_by_size: dict[Annotated[str, Field(pattern=r"^(auto|[1-9][0-9]*x[1-9][0-9]*)$")],
                            NonNegativeFloat] = Field(
        default_factory=dict, description="Image deployments: price per image of a size, "
        "e.g. {'1024x1024': 0.04, '1792x1024': 0.08}; quality is no price dimension here: "
        "serve hd from a deployment of its own. A request naming no size (or auto) is held "
        "at the dearest of these and per_image, and billed at the size it comes in: "
        "per_image for one not listed, else the dearest of these. Without per_image, a "
        "request naming a size not listed is a 400.")
    per_minute: NonNegativeFloat = Field(
        0.0, description="Transcription deployments: price per minute of audio, as OpenAI "
        "bills whisper-1 (the duration the answer reports, else estimated from the upload).")
    per_1m_characters: NonNegativeFloat = Field(
        0.0, description="Speech deployments: price per million characters of input, as "
        "OpenAI bills tts-1.")
    audio_input: NonNegativeFloat | None = Field(
        None, description="Price per million audio input tokens (not read from the prompt "
        "cache, which cache_read prices) of chat, responses and realtime calls; default: "
        "input.")
    audio_output: NonNegativeFloat | None = Field(
        None, description="Price per million audio output tokens of chat, responses and "
        "realtime calls (a chat asking for audio is held at the dearer of output and this); "
        "default: output.")


class ServeSpec(Spec):
    """A vLLM server ``aigw serve`` starts for this deployment, and restarts if it dies.

    It listens where the deployment's provider says (``base_url``, on this machine).
    """

    model: str | None = Field(
        None, description="What vLLM loads: a Hugging Face id or a local path (default: the "
        "deployment's model, which is also the name it serves under); ${ENV_VAR} is read.")
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] = Field(
        0.9, description="Share of each GPU's memory vLLM may take.")
    tensor_parallel_size: Annotated[int, Field(ge=1, le=64)] = Field(
        1, description="GPUs one copy of the model is split over.")
    gpus: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, description="GPU indices it may use (CUDA_VISIBLE_DEVICES); default: all.")
    max_model_len: PositiveInt | None = Field(
        None, description="Longest prompt + output it accepts (default: context_window).")
    args: list[str] = Field(
        default_factory=list,
        description="More vLLM flags, e.g. [--enable-prefix-caching, --max-num-seqs, '64']; "
        "${ENV_VAR} is read, but the command line shows in ps and the server's log: "
        "secrets go in env.")
    env: dict[str, str] = Field(
        default_factory=dict,
        description="More environment for the server; secrets as ${ENV_VAR} (e.g. HF_TOKEN).")
    command: list[str] = Field(
        default_factory=lambda: ["vllm", "serve"], min_length=1,
        description="The program and its leading arguments (the aigw[vllm] extra installs "
        "'vllm'; a virtual environment's path works too); ${ENV_VAR} is read.")
    startup_timeout_s: Annotated[float, Field(gt=0, le=86400)] = Field(
        900.0, description="Time to load the model (downloading it included) before the "
        "server counts as failed and is restarted.")


class DeploymentSpec(Spec):
    """One model on one provider: what the gateway can call."""

    provider: str
    model: str = Field(description="The upstream model id sent to the provider.")
    kind: Literal["chat", "embeddings", "rerank", "image", "moderation", "transcription",
                  "speech", "realtime"] = Field(
        "chat", description="What it serves: /v1/chat/completions, /v1/embeddings, /v1/rerank, "
        "/v1/images/generations and /edits (image), /v1/moderations (moderation), "
        "/v1/audio/transcriptions and /translations (transcription), /v1/audio/speech "
        "(speech), or the /v1/realtime WebSocket (realtime); for rerank, context_window "
        "bounds the query (documents are the provider's to cut), for image the prompt, for "
        "moderation the input."
    )
    context_window: PositiveInt
    max_output_tokens: PositiveInt | None = None
    price: PriceSpec = PriceSpec()
    tags: list[str] = Field(default_factory=list)
    capabilities: list[Capability] = Field(default_factory=lambda: list[Capability](["streaming"]))
    timeout_s: Annotated[float, Field(gt=0)] | None = Field(
        None, description="Per-attempt timeout; defaults to the provider's."
    )
    limits: LimitsSpec | None = Field(None, description="The upstream's own rpm/tpm quota.")
    circuit_breaker: CircuitBreakerSpec | None = Field(
        None, description="Overrides settings.circuit_breaker for this deployment."
    )
    serve: ServeSpec | None = Field(
        None, description="Provider type vllm: start and supervise its server with the gateway.")
    pass_params: list[str] | None = Field(
        None,
        description="Chat parameters beyond those the gateway reads itself (service_tier, "
        "store, audio, ...) that may reach this deployment; a request with another is not "
        "sent to it (400 naming the parameter, or the group's next member). Default: all.",
    )


# The chat request fields the gateway reads and acts on itself (the fields of
# runtime/chat_request.py's ChatRequest; a test keeps the two in step). Every other
# top-level field is a parameter passed on as sent, which ``pass_params`` may restrict.
READ_CHAT_PARAMS = frozenset({
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
    "n", "temperature", "top_p", "stop", "seed", "user", "tools", "tool_choice",
})


class FallbacksSpec(Spec):
    """Groups to try, in order, once every member failed, by what went wrong last."""

    on_error: list[str] = Field(default_factory=list, description="Any failure.")
    on_rate_limit: list[str] | None = Field(None, description="Rate limited (default on_error).")
    on_context_window: list[str] | None = Field(
        None, description="Prompt too long for every member (default on_error)."
    )
    on_content_policy: list[str] | None = Field(
        None, description="Refused by a content policy (default: no fallback)."
    )


class RetrySpec(Spec):
    """Retries of one deployment on a retryable failure, with exponential backoff and jitter."""

    attempts: Annotated[int, Field(ge=0, le=10)] = Field(1, description="Retries per member.")
    backoff_ms: Annotated[float, Field(ge=0)] = Field(200.0, description="First backoff.")
    max_backoff_ms: Annotated[float, Field(ge=0)] = 5000.0


class GroupSpec(Spec):
    """A model alias served by several deployments, with a strategy and fallbacks."""

    members: list[str]
    strategy: Strategy = "priority"
    weights: dict[str, PositiveInt] = Field(
        default_factory=dict, description="For strategy weighted: member -> weight (default 1)."
    )
    fallbacks: list[str] | FallbacksSpec = Field(
        default_factory=list,
        description="Groups tried, in order, when every member failed (a list means on_error).",
    )
    retry: RetrySpec = RetrySpec()

    def fallback_references(self) -> list[tuple[tuple[str | int, ...], str]]:
        """Every fallback group named, in order, with its path under the group."""
        if isinstance(self.fallbacks, list):
            return [(("fallbacks", index), name) for index, name in enumerate(self.fallbacks)]
        references: list[tuple[tuple[str | int, ...], str]] = []
        for field in ("on_error", "on_rate_limit", "on_context_window", "on_content_policy"):
            for index, name in enumerate(getattr(self.fallbacks, field) or ()):
                references.append((("fallbacks", field, index), name))
        return references


class SemanticCacheSpec(Spec):
    """Also answer a request whose conversation means the same as a cached one's."""

    embeddings: str = Field(
        description="The embeddings route of this gateway that embeds each conversation "
        "(billed to the caller, as a call to /v1/embeddings is)."
    )
    threshold: Annotated[float, Field(gt=0, le=1)] = Field(
        0.95, description="Least cosine similarity of a cached conversation served."
    )
    max_prompt_tokens: Annotated[int, Field(ge=1, le=8192)] = Field(
        2048, description="A longer last message (what is embedded) skips the semantic "
        "lookup (exact lookup only)."
    )
    timeout_s: Annotated[float, Field(gt=0, le=60)] = Field(
        2.0, description="Longest wait for the embedding; past it the lookup is a miss."
    )


class CacheSpec(Spec):
    """Answer a request the route has already answered from the cache, upstream untouched."""

    ttl_s: Annotated[float, Field(gt=0, le=30 * 86400)] = Field(
        3600.0, description="How long a cached answer is served."
    )
    scope: Literal["team", "key", "shared"] = Field(
        "team",
        description="Who shares cached answers: the caller's team (a key without a team: "
        "that key), each key alone, or every caller of the route.",
    )
    semantic: SemanticCacheSpec | None = Field(
        None, description="Serve a cached answer to a paraphrase too (text-only requests)."
    )
    one_model: bool = Field(
        False,
        description="The route's deployments are one model: a cached answer from any of "
        "them serves a request routed to another. Without it, deployments of different "
        "models (their model ids) keep their answers apart: a request is served only what "
        "the model it is routed to answered.",
    )


class RouteSpec(Spec):
    """A public model name apps send; exactly one target."""

    group: str | None = None
    deployment: str | None = None
    pipeline: str | None = None
    description: str | None = None
    deadline_s: Annotated[float, Field(gt=0)] = Field(
        300.0, description="Overall deadline, all attempts included (a request may shorten it)."
    )
    max_attempts: Annotated[int, Field(ge=1, le=20)] = Field(
        6, description="Hard cap on upstream attempts, retries and fallbacks included."
    )
    hedge_after_ms: Annotated[float, Field(gt=0)] | Literal["p95"] | None = Field(
        None, description="Start a second attempt after this delay (or the first's p95)."
    )
    cache: CacheSpec | None = Field(
        None, description="Exact-match response cache (group and deployment routes)."
    )
    guardrails: list[str] = Field(
        default_factory=list,
        description="Guardrails (of guardrails:) that check what this route sends to a model "
        "and what comes back, in this order (group and deployment routes).",
    )

    @model_validator(mode="after")
    def _one_target(self) -> RouteSpec:
        targets = [
            name
            for name, value in (
                ("group", self.group), ("deployment", self.deployment), ("pipeline", self.pipeline)
            )
            if value is not None
        ]
        if len(targets) != 1:
            raise PydanticCustomError(
                "route_target",
                "needs exactly one of group, deployment or pipeline; it has {found}",
                {"found": " and ".join(targets) or "none"},
            )
        if self.cache is not None and self.pipeline is not None:
            raise PydanticCustomError(
                "route_cache", "cannot cache a pipeline: its steps run on every request", {}
            )
        return self


class BudgetSpec(Spec):
    """Money in the price table's currency, per calendar period (UTC) or in total."""

    amount: Annotated[float, Field(ge=0, le=MAX_BUDGET)]
    period: Literal["day", "month", "total"] = "month"


class PerUserSpec(Spec):
    """What each end user (the request's ``user`` field) may use, on its own."""

    budget: BudgetSpec | None = None
    limits: LimitsSpec | None = None


class TeamSpec(Spec):
    """A team of keys, with its budget and rate limits."""

    budget: BudgetSpec | None = None
    limits: SubjectLimitsSpec | None = None
    per_user: PerUserSpec | None = Field(None, description="Limits of each end user.")


def moment_epoch(text: str) -> float | None:
    """Epoch seconds of an ISO 8601 date or date and time, UTC where it names no zone;
    None if ``text`` is neither. A date alone is that day's 00:00 UTC.

    >>> moment_epoch("2026-12-15"), moment_epoch("2026-12-15T01:00:00+01:00")
    (1797292800.0, 1797292800.0)
    """
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def _check_moment(text: str) -> str:
    if moment_epoch(text) is None:
        raise PydanticCustomError(
            "moment", "expected a date (2026-12-15) or a date and time "
            "(2026-12-15T18:00:00Z), found '{found}'", {"found": text})
    return text


# A date or a date and time as written; YAML's own dates arrive here as their ISO text.
Moment = Annotated[str, AfterValidator(_check_moment)]


def _one_secret(secret: str | None, sha256: str | None) -> None:
    """Exactly one of ``secret`` and ``sha256``, the digest well formed."""
    if (secret is None) == (sha256 is None):
        raise PydanticCustomError(
            "key_secret",
            "needs exactly one of secret or sha256; it has {found}",
            {"found": "neither" if secret is None else "both"},
        )
    if sha256 is not None and not SHA256_PATTERN.match(sha256):
        length = len(sha256)
        problem = "characters other than 0-9 a-f" if length == 64 else f"{length} characters"
        raise PydanticCustomError(
            "sha256",
            "sha256 must be 64 lowercase hex digits; it has {problem}",
            {"problem": problem},
        )


class PreviousSecretSpec(Spec):
    """A secret a key had before its rotation: it is still that key until ``until``."""

    secret: str | None = Field(None, description="The earlier key itself, as ${ENV_VAR}.")
    sha256: str | None = Field(None, description="Hex sha256 digest of the earlier key.")
    until: Moment | None = Field(
        None, description="Refused from this date (00:00 UTC) or date and time on; "
        "unset: accepted until it is taken out of previous."
    )

    @model_validator(mode="after")
    def _one_secret(self) -> PreviousSecretSpec:
        _one_secret(self.secret, self.sha256)
        return self


class KeySpec(Spec):
    """An API key the gateway accepts: its secret as ${ENV_VAR}, or its sha256 digest."""

    team: str | None = None
    admin: bool = False
    secret: str | None = Field(None, description="The key itself, as ${ENV_VAR}.")
    sha256: str | None = Field(None, description="Hex sha256 digest of the key.")
    description: str | None = None
    routes: list[str] | None = Field(None, description="Routes this key may call (default all).")
    mcp_servers: list[str] | None = Field(
        None, description="MCP servers this key may reach at /mcp/<name> (default all)."
    )
    passthrough: list[str] | None = Field(
        None, description="Pass-throughs this key may use at /passthrough/<name>/... "
        "(default all)."
    )
    budget: BudgetSpec | None = None
    limits: SubjectLimitsSpec | None = None
    per_user: PerUserSpec | None = Field(
        None, description="Limits of each end user of this key (overrides the team's)."
    )
    expires: Moment | None = Field(
        None, description="Refused from this date (00:00 UTC) or date and time on."
    )
    previous: list[PreviousSecretSpec] = Field(
        default_factory=list,
        description="Earlier secrets still accepted as this key during a rotation.",
    )

    @model_validator(mode="after")
    def _one_secret(self) -> KeySpec:
        _one_secret(self.secret, self.sha256)
        return self


# What a token may be signed with: public-key algorithms only. "none" forges nothing
# needed, and with HS256 (a shared secret) whoever holds the published keys could sign.
JwtAlgorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
]


class IssuerTeamSpec(Spec):
    """The team a token's caller is in, read from one of the token's claims."""

    claim: str = Field(description="The claim naming the caller's groups or roles (a string "
                       "or a list of strings), e.g. groups.")
    map: dict[str, str] = Field(
        min_length=1, description="Claim value -> team; the first entry whose value the "
        "token holds decides.")
    default: str | None = Field(
        None, description="The team of a caller whose token holds none of the values; "
        "without it such a caller is refused (403).")


# A JWK's members are strings (kty, kid, n, e, x, y, crv, alg, use) or lists of them
# (key_ops, x5c): a YAML scalar read as a number or a date is refused where it stands.
JwkSpec = dict[str, str | list[str]]


class JwksSpec(Spec):
    """A JSON Web Key Set written in the config, as the provider's jwks_uri serves it."""

    keys: list[JwkSpec] = Field(
        min_length=1, description="The provider's public signing keys (JWKs: kty, kid, and "
        "n and e, or crv, x and y), e.g. {kty: RSA, kid: k1, n: ..., e: AQAB}.")


class IssuerSpec(Spec):
    """An identity provider (OIDC) whose signed JWTs apps may send as their bearer token."""

    issuer: str = Field(description="The tokens' iss claim, exactly as the provider writes "
                        "it, e.g. https://login.example.com/")
    jwks_url: str | None = Field(
        None, description="Where the provider publishes its signing keys (https; http only "
        "on loopback), e.g. https://login.example.com/.well-known/jwks.json")
    jwks_file: str | None = Field(
        None, description="A JSON Web Key Set file beside gateway.yaml, for gateways that "
        "cannot reach the provider (exactly one of jwks_url, jwks_file and jwks).")
    jwks: JwksSpec | None = Field(
        None, description="The provider's JSON Web Key Set written here ({keys: [...]}), "
        "for gateways that cannot reach it (exactly one of jwks_url, jwks_file and jwks).")
    audiences: list[str] = Field(
        min_length=1, description="Values of the aud claim that name this gateway; a token "
        "must carry one.")
    algorithms: list[JwtAlgorithm] = Field(
        default_factory=lambda: list[JwtAlgorithm](["RS256"]), min_length=1,
        description="Signature algorithms accepted (public-key ones only).")
    team: str | IssuerTeamSpec | None = Field(
        None, description="The team of every caller of this issuer, or how a claim picks it.")
    principal_claim: str = Field(
        "sub", description="The claim naming the caller: its ledger name, its rpm/tpm "
        "counters' and its Cedar principal (Subject::\"<value>\").")
    routes: list[str] | None = Field(None, description="Routes its callers may call "
                                     "(default all).")
    mcp_servers: list[str] | None = Field(
        None, description="MCP servers its callers may reach at /mcp/<name> (default all).")
    passthrough: list[str] | None = Field(
        None, description="Pass-throughs its callers may use at /passthrough/<name>/... "
        "(default all).")
    budget: BudgetSpec | None = Field(None, description="Each caller's own budget.")
    limits: SubjectLimitsSpec | None = Field(None, description="Each caller's own limits.")
    leeway_s: Annotated[float, Field(ge=0, le=300)] = Field(
        30.0, description="Clock skew allowed when exp, nbf and iat are checked.")
    jwks_max_age_s: Annotated[float, Field(ge=1, le=86_400)] = Field(
        300.0, description="How long fetched keys are used before they are fetched again "
        "(kept, and used, while the provider cannot be reached).")
    jwks_refetch_s: Annotated[float, Field(ge=1, le=3600)] = Field(
        10.0, description="The fewest seconds between two fetches that tokens naming a "
        "kid the keys lack (a rotation), or whose signature the key they name does not "
        "verify (a rotation that kept the kid), cause: a flood of made-up kids or forged "
        "signatures costs the provider one request in this long.")
    description: str | None = None

    @model_validator(mode="after")
    def _one_key_source(self) -> IssuerSpec:
        given = [name for name, value in (("jwks_url", self.jwks_url),
                                          ("jwks_file", self.jwks_file),
                                          ("jwks", self.jwks)) if value is not None]
        if len(given) != 1:
            raise PydanticCustomError(
                "issuer_jwks", "needs exactly one of jwks_url, jwks_file and jwks, found "
                "{found}", {"found": " and ".join(given) or "neither"})
        return self


class McpServerSpec(Spec):
    """An upstream MCP server, proxied at ``/mcp/<name>``: one reached at ``url`` (speaking
    streamable HTTP, or with ``transport: sse`` the older HTTP+SSE transport), or a
    ``command`` the gateway starts, a process a session, speaking on its stdin and stdout
    (exactly one of url and command)."""

    url: str | None = Field(
        None,
        description="The server's MCP endpoint, e.g. https://mcp.example.com/mcp (or "
        "${ENV_VAR}); with transport: sse, its SSE endpoint, e.g. https://mcp.example.com/sse.",
    )
    transport: Literal["streamable_http", "sse"] = Field(
        "streamable_http",
        description="What the server at url speaks: streamable_http (MCP 2025-03-26 and "
        "later), or sse, the HTTP+SSE transport of 2024-11-05 (the gateway holds an event "
        "stream a session; apps still speak streamable HTTP to the gateway).",
    )
    command: list[Annotated[str, Field(min_length=1)]] | None = Field(
        None, min_length=1,
        description="A stdio server: the program and its arguments, e.g. [npx, -y, "
        "@modelcontextprotocol/server-filesystem, /srv/docs]; started for each session.",
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="A stdio server's environment beyond PATH, HOME, USER, LANG and the "
        "like (the gateway's own is not passed on); a credential only as ${ENV_VAR}.",
    )
    cwd: str | None = Field(
        None, description="A stdio server's working directory (relative: to the config's "
        "folder, which is the default).")
    idle_timeout_s: Annotated[float, Field(gt=0, le=86400)] = Field(
        300.0, description="A stdio or sse server: a session with no message for this long "
        "is ended (its process stopped, its event stream closed; its id is then unknown, "
        "a 404).")
    max_sessions: Annotated[int, Field(ge=1, le=1024)] = Field(
        16, description="A stdio or sse server: the most sessions (processes, event "
        "streams) at once; an initialize past it is a 503.")
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Headers sent to the server with every request; a credential only as "
        "${ENV_VAR} (Authorization: Bearer ${GITHUB_TOKEN}).",
    )
    timeout_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        60.0, description="The longest the server may take to start an answer, and between "
        "two parts of a streamed one; past it the client gets a 504."
    )
    tools: list[str] | None = Field(
        None,
        description="The tools apps may see and call; unset: every tool the server offers.",
    )


HttpMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]


class PassthroughSpec(Spec):
    """A provider API the gateway does not model (vector stores, fine-tuning jobs, message
    batches, a vLLM server's /tokenize), reached as it is at ``/passthrough/<name>/<path>``
    with the provider's credentials: the caller's aigw key never goes upstream."""

    provider: str = Field(description="The provider whose API and credentials it uses.")
    paths: list[Annotated[str, Field(min_length=1)]] = Field(
        min_length=1,
        description="The paths allowed, under the provider's root (its base_url without a "
        "trailing API version: https://api.openai.com for OpenAI's), as globs: * is any "
        "text within one path segment, /** any number of segments (none too), e.g. "
        "/v1/vector_stores/**. Any other path is a 404.")
    methods: list[HttpMethod] = Field(
        default_factory=lambda: list[HttpMethod](["GET", "POST"]), min_length=1,
        description="The HTTP methods allowed (default GET and POST); another is a 405.")
    hold_tokens: Annotated[int, Field(ge=0, le=10_000_000)] = Field(
        4096,
        description="What a POST holds against its caller's tokens per minute and "
        "budgets before it is sent, where its body does not tell (not JSON, larger than "
        "max_request_bytes, or naming no max_tokens, max_completion_tokens, "
        "max_output_tokens nor generationConfig.maxOutputTokens): these tokens, at the "
        "output price of the deployment of the model it names, else of the provider's "
        "dearest. Settled to the usage its answer reports; 0 for an API whose requests "
        "run no model (file uploads).")
    description: str | None = None


class GuardrailCacheSpec(Spec):
    """How many of a webhook's verdicts on input texts are kept, and for how long."""

    max_entries: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        10_000, description="Verdicts kept in each gateway process; the least recently "
        "used go first.")
    ttl_s: Annotated[float, Field(gt=0, le=86_400)] = Field(
        300.0, description="How long a verdict is reused before the checker is asked again.")


class GuardrailSpec(Spec):
    """A check routes attach by name: on what goes to a model (input), on what comes back
    (output), or both; it blocks, redacts or only logs what it finds."""

    kind: Literal["regex", "pii", "webhook"] = Field(
        description="regex: patterns; pii: built-in recognizers (entities); webhook: an "
        "external checker (url).")
    on: list[Literal["input", "output"]] = Field(
        default_factory=lambda: list[Literal["input", "output"]](["input", "output"]),
        min_length=1, description="Which side it checks (default both).")
    action: Literal["block", "redact", "log"] = Field(
        "block",
        description="block: refuse the request (input, 400 guardrail_blocked) or withhold "
        "the answer (output, finish_reason content_filter); redact: replace what matched "
        "([REDACTED], [EMAIL], ...; a webhook's text); log: only count and log it.")
    patterns: list[str] | None = Field(
        None, description="kind regex: Python regular expressions; any match acts.")
    entities: list[str] | None = Field(
        None, description="kind pii: email, phone, credit_card (Luhn-checked), ipv4, iban "
        "(mod-97-checked), us_ssn.")
    url: str | None = Field(
        None, description="kind webhook: where {text, direction, route, key, team} is POSTed; "
        "it answers {allow, reason?, text?}.")
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="kind webhook: headers sent with every check; a credential only as "
        "${ENV_VAR} (Authorization: Bearer ${GUARD_TOKEN}).")
    timeout_s: Annotated[float, Field(gt=0, le=60)] = Field(
        2.0, description="kind webhook: the longest a check may take.")
    on_error: Literal["block", "allow"] = Field(
        "block", description="kind webhook: what an unreachable, slow or failing checker "
        "(a timeout, a 5xx, an unreadable answer) means.")
    cache: GuardrailCacheSpec | bool = Field(
        default_factory=GuardrailCacheSpec,
        description="kind webhook: reuse its verdicts (allow, block, a redaction) on input "
        "texts it has judged, so a conversation sent again each turn asks only about its "
        "new messages; an error is never kept. false: ask every time.")
    description: str | None = None


class SectionsSpec(Spec):
    """The named sections; also the whole shape of an included file."""

    include: list[str] = Field(default_factory=list, description="More YAML files to merge in.")
    providers: dict[str, ProviderSpec] = Field(default_factory=dict)
    deployments: dict[str, DeploymentSpec] = Field(default_factory=dict)
    groups: dict[str, GroupSpec] = Field(default_factory=dict)
    routes: dict[str, RouteSpec] = Field(default_factory=dict)
    teams: dict[str, TeamSpec] = Field(default_factory=dict)
    keys: dict[str, KeySpec] = Field(default_factory=dict)
    issuers: dict[str, IssuerSpec] = Field(
        default_factory=dict, description="Identity providers whose JWTs sign apps in.")
    mcp_servers: dict[str, McpServerSpec] = Field(
        default_factory=dict, description="MCP servers apps reach through the gateway."
    )
    agents: dict[str, AgentSpec] = Field(
        default_factory=dict, description="Remote A2A agents that pipeline steps call.")
    guardrails: dict[str, GuardrailSpec] = Field(
        default_factory=dict, description="Checks routes attach by name (routes' guardrails:).")
    passthrough: dict[str, PassthroughSpec] = Field(
        default_factory=dict, description="Provider APIs apps reach raw through the gateway, "
        "at /passthrough/<name>/<path>, governed by keys, policies and limits.")


NAMED_SECTIONS: tuple[str, ...] = (
    "providers",
    "deployments",
    "groups",
    "routes",
    "teams",
    "keys",
    "issuers",
    "mcp_servers",
    "agents",
    "guardrails",
    "passthrough",
)
