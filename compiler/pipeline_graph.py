"""What runs: compiled pipelines, part of the frozen Graph.

Every template is compiled, every model already a ``Route`` (a route of the gateway, or
one made for a group or deployment), every schema checked and ready to validate, the
steps in an order where each comes after what it needs. The runtime only evaluates.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from itertools import islice
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .egress import Egress
    from .graph import Route
    from .templates import Expr, Text, Value


class StepKind(StrEnum):
    LLM = "llm"
    HTTP = "http"
    TRANSFORM = "transform"
    BRANCH = "branch"
    MAP = "map"
    ENSEMBLE = "ensemble"
    CASCADE = "cascade"
    LOOP = "loop"
    APPROVAL = "approval"
    PIPELINE = "pipeline"
    PYTHON = "python"
    AGENT = "agent"


# The most problems of an instance told, and the most characters of each. A caller's input
# of 100,000 wrong items was 100,000 problems, found in 11 s of the event loop (jsonschema
# slows as they pile up) and answered as megabytes; a message quotes the value it found,
# however long.
MAX_PROBLEMS = 10
MAX_PROBLEM_CHARS = 300


@dataclass(frozen=True, slots=True)
class JsonSchema:
    """A checked JSON Schema document and the validator built for it once."""

    document: Mapping[str, Any]
    validator: Any  # a jsonschema Validator instance

    def errors(self, instance: Any) -> tuple[str, ...]:
        """What is wrong with ``instance``, one line per problem (empty when it conforms):
        the first ``MAX_PROBLEMS`` found, each cut to ``MAX_PROBLEM_CHARS``, and a last
        line saying there are more."""
        found = list(islice(self.validator.iter_errors(instance), MAX_PROBLEMS + 1))
        lines = [_cut(f"{'/'.join(str(part) for part in error.path) or '(root)'}: "
                      f"{error.message}")
                 for error in sorted(found[:MAX_PROBLEMS], key=lambda error: list(error.path))]
        if len(found) > MAX_PROBLEMS:
            lines.append(f"and more (the first {MAX_PROBLEMS} problems are shown)")
        return tuple(lines)


def _cut(line: str) -> str:
    if len(line) <= MAX_PROBLEM_CHARS:
        return line
    return f"{line[:MAX_PROBLEM_CHARS]}... ({len(line)} characters)"


@dataclass(frozen=True, slots=True)
class ModelCall:
    """A prompt sent to one or more models (one for llm; several for ensemble and cascade).

    ``models`` are names; the pipeline's ``routes`` maps each to the route that serves it."""

    models: tuple[str, ...]
    prompt: Text
    system: Text | None
    output: Literal["text", "json"]
    schema: JsonSchema | None
    validation_retries: int
    max_tokens: int | None
    temperature: float | None


@dataclass(frozen=True, slots=True)
class Llm:
    call: ModelCall


@dataclass(frozen=True, slots=True)
class Http:
    method: str
    url: Text
    headers: tuple[tuple[str, Text], ...]
    body: Value | None
    egress: Egress  # where the rendered URL may go (compiler/egress.py)


@dataclass(frozen=True, slots=True)
class Agent:
    """A remote A2A agent of the ``agents:`` section, ready to call (compiler/agents.py)."""

    name: str
    url: str  # its ${ENV} references resolved
    card: bool  # url is its agent card (the JSON-RPC endpoint is read from it), else the endpoint
    egress: Egress  # the one origin its calls may reach: url's (a card's endpoint must be on it)
    headers: tuple[tuple[str, str], ...]  # Authorization from api_key, then headers:
    disabled_reason: str | None  # e.g. an ${ENV} credential is not set
    # The A2A version it is called with ("1.0", "0.3", "0.2"); None: the one its card prefers
    a2a_version: str | None = None


@dataclass(frozen=True, slots=True)
class AgentCall:
    """A message to a remote agent; its reply (or its task's artifacts) is the output."""

    agent: Agent
    prompt: Text
    output: Literal["text", "json"]


@dataclass(frozen=True, slots=True)
class Transform:
    expression: Expr


@dataclass(frozen=True, slots=True)
class Branch:
    cases: tuple[tuple[Expr, tuple[str, ...]], ...]
    default: tuple[str, ...]

    @property
    def targets(self) -> frozenset[str]:
        return frozenset(self.default).union(*(then for _when, then in self.cases))


@dataclass(frozen=True, slots=True)
class MapStep:
    over: Expr
    step: Step
    concurrency: int
    max_items: int = 1000


@dataclass(frozen=True, slots=True)
class Ensemble:
    call: ModelCall
    combine: Literal["majority_vote", "average", "all"]


@dataclass(frozen=True, slots=True)
class Cascade:
    call: ModelCall
    check: Expr


@dataclass(frozen=True, slots=True)
class Loop:
    max_iterations: int
    planner: Expr | ModelCall
    actions: Mapping[str, Step]


@dataclass(frozen=True, slots=True)
class Approvers:
    """The keys, and the teams whose keys, may decide an approval (admin keys always may)."""

    keys: frozenset[str]
    teams: frozenset[str]

    def as_dict(self) -> dict[str, list[str]]:
        return {"keys": sorted(self.keys), "teams": sorted(self.teams)}


@dataclass(frozen=True, slots=True)
class Approval:
    message: Text
    default: Literal["approve", "reject"]
    approvers: Approvers | None = None  # None: the key that started the execution


@dataclass(frozen=True, slots=True)
class SubPipeline:
    pipeline: str
    input: Value


@dataclass(frozen=True, slots=True)
class Python:
    function_name: str
    function: Callable[..., Awaitable[Any]]
    args: tuple[tuple[str, Value], ...]


Action = (
    Llm | Http | Transform | Branch | MapStep | Ensemble | Cascade | Loop | Approval
    | SubPipeline | Python | AgentCall
)


@dataclass(frozen=True, slots=True)
class Step:
    """One step: what it does (``action``) and how it is run (retries, timeout, condition)."""

    name: str
    kind: StepKind
    needs: tuple[str, ...]  # as written, plus the branch steps that list it
    when: Expr | None
    retries: int
    backoff_ms: float
    timeout_s: float
    output_schema: JsonSchema | None
    action: Action
    description: str | None = None


@dataclass(frozen=True, slots=True)
class Pipeline:
    """A compiled pipeline. ``steps`` is in an order where every step follows its needs."""

    name: str
    file: str
    description: str | None
    input_schema: JsonSchema
    output: Value
    output_schema: JsonSchema | None
    steps: Mapping[str, Step]
    upstream: Mapping[str, frozenset[str]]  # every step a step depends on, transitively
    chosen_by: Mapping[str, tuple[str, ...]]  # step -> the branch steps that list it
    chat_field: str | None  # input field a chat message fills (see runtime/workflows)
    calls: frozenset[str]  # pipelines its steps call
    models: frozenset[str]  # the model names its steps use
    # Each model name its steps use -> the route serving it: a route of the gateway, or
    # one made for a group or deployment. Filled in by freeze.
    routes: Mapping[str, Route]
