"""What gateway.yaml alone may hold: its version and the gateway-wide settings, over the
named sections every config file shares (``spec.SectionsSpec``).

Pydantic models of what the user wrote, as in ``spec``; ``link`` lowers the settings
into the graph's ``Settings``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from .spec import CircuitBreakerSpec, PositiveInt, SectionsSpec, Spec


class SettingsSpec(Spec):
    """Gateway-wide settings (only in the top-level gateway.yaml)."""

    store: str = Field(
        "embedded",
        description="'embedded' for one gateway, or a redis:// URL shared by several replicas.",
        pattern=r"^(embedded(:\S+)?|rediss?://\S+|unix://\S+)$",
    )
    max_request_bytes: PositiveInt = Field(
        4 * 1024 * 1024, description="Largest request body accepted; larger ones get a 413."
    )
    max_audio_upload_bytes: PositiveInt = Field(
        25 * 1024 * 1024,
        description="Largest multipart body /v1/audio/transcriptions and /translations "
        "accept (OpenAI's own cap on an audio file is 25 MB); larger ones get a 413, "
        "refused as they pass it, never read whole.",
    )
    max_image_upload_bytes: PositiveInt = Field(
        50 * 1024 * 1024,
        description="Largest multipart body /v1/images/edits accepts, its images and mask "
        "together (OpenAI's own cap is 50 MB an image for gpt-image-1, 4 MB for dall-e-2); "
        "larger ones get a 413, refused as they pass it, never read whole.",
    )
    max_passthrough_bytes: PositiveInt = Field(
        512 * 1024 * 1024,
        description="Largest request body a pass-through (passthrough:) sends on (OpenAI's "
        "own cap on a file is 512 MB); larger ones get a 413, refused as they pass it, "
        "never held whole. Answers are streamed back, whatever their size.",
    )
    body_read_timeout_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        60.0,
        description="The longest a request's body may take to arrive, from the first wait "
        "for it; past it the request gets a 408 (a client trickling its body in held its "
        "connection for ever). A pass-through's body, which may be a large upload, is "
        "timed a part at a time: the longest wait for its next part.",
    )
    max_request_json_containers: Annotated[int, Field(ge=1, le=10_000_000)] = Field(
        50_000,
        description="The most JSON objects and arrays (together) a request body may hold; "
        "one with more gets a 400 before it is parsed. Each costs the gateway 60 to 600 "
        "bytes of memory while parsed against the 2 or 3 it takes to send, so a body of "
        "empty arrays cost 20 to 35 times its size; at this bound it costs no more than a "
        "body of short strings or numbers.",
    )
    hide_policy_ids: bool = Field(
        False, description="Leave the deciding Cedar policy ids out of 403 responses."
    )
    metrics_access: Literal["open", "admin"] = Field(
        "open",
        description="Who may read GET /metrics: anyone who reaches the port ('open', as "
        "Prometheus scrapes by default), or admin keys only ('admin': give Prometheus one "
        "with its scrape config's authorization). The page names teams and keys, with their "
        "spend and budget use.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    redis_namespace: str = Field(
        "aigw",
        description="Redis store: the prefix of all the gateway's keys there; gateways that "
        "share one Redis (two environments) need one each. 1 to 64 letters, digits, '_', "
        "'.' or '-' (no ':', which separates the parts of a key).",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
    )
    store_failure: Literal["fail_closed", "fail_open"] = Field(
        "fail_closed",
        description="When Redis is unreachable: refuse with 503, or enforce local limits.",
    )
    store_outbox: str = Field(
        "aigw-outbox.sqlite",
        description="Redis store: the file (relative to the gateway directory) where "
        "settles and spend records wait while Redis is unreachable, so a restart loses "
        "none; 'memory' keeps them in memory only (lost if the gateway stops).",
        pattern=r"^\S+$",
    )
    unsaved_dir: str = Field(
        "aigw-unsaved",
        description="The folder (relative to the gateway directory) where a pipeline's "
        "model answer or agent task waits while the executions store cannot save it, so "
        "a runner restarted meanwhile does not call the model, or message the agent, "
        "again. Shared by the processes serving one gateway directory.",
        pattern=r"^\S+$",
    )
    reservation_ttl_s: Annotated[float, Field(gt=0)] = Field(
        900.0,
        description="A budget hold nobody settles (a crashed gateway) expires after this; "
        "a request renews its holds every half of it while it runs.",
    )
    ledger_retention_days: Annotated[int, Field(gt=0, le=36500)] | None = Field(
        None,
        description="Spend ledger records older than this many days are deleted (both "
        "stores; unset keeps every record). Budgets are counted apart and keep counting.",
    )
    ledger_sync: Literal["full", "normal"] = Field(
        "normal",
        description="Embedded store: 'normal' survives a killed gateway (kill -9) without an "
        "fsync per request; 'full' also survives a power loss, at an fsync per request.",
    )
    stop_streams_over_budget: bool = Field(
        False,
        description="Cut a stream mid-flight when its budget runs out, or when a reload "
        "removed its key. While the store cannot answer, streams in flight go on "
        "unchecked (logged once), as they settle through the outbox.",
    )
    user_header: str = Field(
        "x-aigw-user", description="Header naming the end user when the body has no 'user'."
    )
    websocket_ping_interval_s: Annotated[float, Field(gt=0, le=3600)] | None = Field(
        20.0,
        description="Seconds between the pings the gateway sends on each WebSocket (a "
        "Realtime session's); a client that has not answered the one before (nor sent "
        "anything) is dropped then, and its place under max_parallel given back. Unset: "
        "no pings, and a vanished client holds its place until TCP gives up. Read at "
        "start (a reload does not change it).",
    )
    websocket_max_message_bytes: Annotated[int, Field(ge=1024, le=1 << 30)] = Field(
        16 * 1024 * 1024,
        description="Largest message a client may send on a WebSocket (a Realtime "
        "session's event; a text message counts its characters): one larger closes the "
        "connection with 1009 (message too big), and the session ends as when its client "
        "leaves. 16 MiB by default: OpenAI takes audio appends of up to 15 MiB. Read at "
        "start (a reload does not change it).",
    )
    realtime_max_session_s: Annotated[float, Field(gt=0, le=86400)] = Field(
        3600.0,
        description="Longest a Realtime session (/v1/realtime) stays open (OpenAI's own cap "
        "is 60 minutes): then, after its response in flight (billed), it is closed with "
        "1001 after a session_expired error event. A session also ends when its key "
        "expires (key_expired, 3000).",
    )
    execution_lease_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        30.0,
        description="A pipeline execution whose gateway stopped renewing its lease this long "
        "is resumed by another replica (or by the gateway after a restart).",
    )
    execution_capacity: Annotated[int, Field(gt=0, le=100_000)] = Field(
        256,
        description="Pipeline executions one gateway process runs at once; more wait "
        "queued. Executions waiting for an approval's decision are not counted, so "
        "approvals nobody has answered yet never keep new executions from starting.",
    )
    execution_retention_s: Annotated[float, Field(gt=0, le=10 * 365 * 86400)] = Field(
        30 * 86400.0,
        description="A pipeline execution that ended longer ago than this is deleted, with "
        "its steps and events (cost totals keep counting it; the spend ledger keeps every "
        "model call).",
    )
    circuit_breaker: CircuitBreakerSpec = Field(
        CircuitBreakerSpec(), description="Default circuit breaker of every deployment."
    )
    cache_max_entries: PositiveInt = Field(
        10_000,
        description="Embedded store: answers the response cache keeps, least recently used "
        "dropped first (Redis keeps them by TTL and its own maxmemory policy).",
    )
    cache_max_bytes: PositiveInt = Field(
        128 * 1024 * 1024,
        description="Embedded store: bytes of answers the response cache keeps in the "
        "process, least recently used dropped first while over it.",
    )
    cache_max_entry_bytes: PositiveInt = Field(
        1024 * 1024,
        description="Largest answer the response cache keeps (as stored); a larger one is "
        "served but not kept, in the process or in Redis.",
    )
    responses_ttl_s: Annotated[float, Field(gt=0, le=10 * 365 * 86400)] = Field(
        30 * 86400.0,
        description="How long /v1/responses keeps a response (store: true, the default) "
        "for previous_response_id and GET /v1/responses/{id}, in the store (the SQLite "
        "file, or Redis).",
    )
    responses_max_bytes: PositiveInt = Field(
        4 * 1024 * 1024,
        description="Largest response /v1/responses keeps, as stored: its own input items "
        "(those of the response it continued are not repeated; a conversation's are) and "
        "its output. A larger one is answered but not kept (logged), so "
        "previous_response_id cannot name it (the error says why).",
    )
    responses_chain_max_depth: Annotated[int, Field(gt=0, le=100_000)] = Field(
        1000,
        description="Most responses a previous_response_id chain may hold (each one and "
        "those before it): a continuation that would make it longer, or listing the input "
        "items of a longer one, is a 400 that says so.",
    )
    responses_chain_max_bytes: PositiveInt = Field(
        16 * 1024 * 1024,
        description="Most bytes a previous_response_id chain's kept records may hold in "
        "all (its whole conversation, as stored); continuing or listing the input items of "
        "a larger one is a 400 that says so.",
    )
    conversations_max_items: Annotated[int, Field(gt=0, le=100_000)] = Field(
        10_000,
        description="Most items a conversation (/v1/conversations) holds; its items are "
        "also at most responses_max_bytes in all, and it is kept responses_ttl_s after its "
        "last change. Adding items past either is a 400 (a response in the conversation "
        "is refused before any upstream call).",
    )
    files_dir: str = Field(
        "aigw-files",
        description="The folder (relative to the gateway directory) where /v1/files keeps "
        "the bytes of uploaded files and of batches' output and error files (their "
        "records are in the store: aigw-batches.sqlite beside the embedded one's file, or "
        "Redis). With a Redis store, one folder every replica mounts.",
        pattern=r"^\S+$",
    )
    files_max_bytes: Annotated[int, Field(gt=0, le=1 << 30)] = Field(
        200 * 1024 * 1024,
        description="Largest file POST /v1/files takes (OpenAI's batch input limit, "
        "200 MB); a larger upload is a 413.",
    )
    batch_output_retention_s: Annotated[int, Field(ge=3600, le=315_360_000)] = Field(
        30 * 86_400,
        description="How long a batch's output and error files are kept, from when they "
        "are written, unless the batch asked otherwise (its output_expires_after); then "
        "they are purged, bytes and records (OpenAI keeps them 30 days).",
    )
    batch_max_lines: Annotated[int, Field(gt=0, le=1_000_000)] = Field(
        50_000,
        description="Most requests one batch's input file may hold (OpenAI's limit); a "
        "longer file fails the batch with a line error.",
    )
    batch_concurrency: Annotated[int, Field(gt=0, le=1000)] = Field(
        4,
        description="Requests of one batch in flight at once.",
    )
    batches_concurrency: Annotated[int, Field(gt=0, le=10_000)] = Field(
        8,
        description="Requests of all batches in flight at once in one gateway process, "
        "so that batches never take the upstreams from interactive traffic.",
    )


class GatewaySpec(SectionsSpec):
    """gateway.yaml: the version, settings and every named section."""

    version: Literal[1]
    settings: SettingsSpec = SettingsSpec()

    @field_validator("version", mode="before")
    @classmethod
    def _version_not_bool(cls, value: object) -> object:
        # Literal[1] accepts True (True == 1 in Python), so 'version: true' would pass.
        if isinstance(value, bool):
            raise PydanticCustomError("literal_error", "expected 1", {"expected": "1"})
        return value
