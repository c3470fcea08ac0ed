"""What the user wrote in ``pipelines/<name>.yaml``: pydantic models, unknown keys rejected.

A pipeline is an input JSON Schema, steps that form a DAG through ``needs:``, and an
output built from the steps' results. Every step names its ``kind``; the fields after
that depend on the kind (``StepSpec`` is a union discriminated by ``kind``)::

    input: {type: object, required: [topic], properties: {topic: {type: string}}}
    steps:
      search: {kind: llm, model: fast, prompt: "Sources about {{ input.topic }}"}
      report: {kind: llm, model: smart, needs: [search], prompt: "Report: {{ steps.search }}"}
    output: "{{ steps.report }}"

Strings in prompts, urls, bodies and outputs are jinja2 templates; ``when``, ``over``,
``check``, ``expression`` and a planner's ``expression`` are jinja2 expressions. The
``pipelines`` compiler stage checks them; the runtime never sees these models.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from .spec import PositiveInt, Spec

JsonSchemaDocument = dict[str, Any]
OutputFormat = Literal["text", "json"]


class StepBaseSpec(Spec):
    """What every step has: its dependencies, a condition, retries and a timeout."""

    needs: list[str] = Field(default_factory=list, description="Steps that must finish first.")
    when: str | None = Field(
        None, description="A jinja2 expression; the step is skipped when it is false."
    )
    retries: Annotated[int, Field(ge=0, le=10)] = Field(
        0, description="Tries after the first one fails."
    )
    backoff_ms: Annotated[float, Field(ge=0)] = Field(
        500.0, description="Wait before the first retry; doubled for each further one."
    )
    timeout_s: Annotated[float, Field(gt=0)] = Field(
        300.0, description="Time one try may take (an approval: how long it waits)."
    )
    output_schema: JsonSchemaDocument | None = Field(
        None, description="JSON Schema the step's output must satisfy."
    )
    description: str | None = None


class ModelCallSpec(StepBaseSpec):
    """The prompt fields shared by llm, ensemble and cascade steps."""

    prompt: str = Field(description="jinja2 template of the user message.")
    system: str | None = Field(None, description="jinja2 template of the system message.")
    output: OutputFormat = Field(
        "text", description="text, or json: the answer is parsed (and checked against schema)."
    )
    json_schema: JsonSchemaDocument | None = Field(
        None, alias="schema", description="With output: json, the JSON Schema of the answer."
    )
    validation_retries: Annotated[int, Field(ge=0, le=5)] = Field(
        2, description="Asks again, quoting the error, when a json answer does not conform."
    )
    max_tokens: PositiveInt | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None


class LlmStepSpec(ModelCallSpec):
    """A call through the gateway to a route, group or deployment."""

    kind: Literal["llm"]
    model: str = Field(description="A route, group or deployment of this gateway.")


class EnsembleStepSpec(ModelCallSpec):
    """The same prompt to several models in parallel, combined into one answer."""

    kind: Literal["ensemble"]
    models: Annotated[list[str], Field(min_length=2)]
    combine: Literal["majority_vote", "average", "all"] = "majority_vote"


class CascadeStepSpec(ModelCallSpec):
    """Models tried cheapest first; the next one only when ``check`` fails on an answer."""

    kind: Literal["cascade"]
    models: Annotated[list[str], Field(min_length=2)]
    check: str = Field(description="jinja2 expression over `answer`; true accepts it.")


class HttpStepSpec(StepBaseSpec):
    """A tool call to an HTTP endpoint; a JSON response is parsed."""

    kind: Literal["http"]
    url: str = Field(description="jinja2 template of the URL; its scheme, host and port are "
                     "written out unless allow_hosts lists where a templated host may go.")
    allow_hosts: list[Annotated[str, Field(
        pattern=r"^(https?://)?[A-Za-z0-9.-]+(:[0-9]{1,5})?$")]] | None = Field(
        None, min_length=1,
        description="Where a URL with a templated host may go: 'host' (https, port 443), "
        "'host:port' (https) or 'http://host:port'.",
    )
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict, description="Templated values.")
    body: Any = Field(
        None, description="Sent as JSON; every string in it is a template, and a string that "
        "is exactly '{{ expression }}' keeps the expression's type.",
    )


class AgentStepSpec(StepBaseSpec):
    """A message to a remote A2A agent of the gateway's ``agents:`` section; the text of
    its reply, or of its task's artifacts once the task is done, is the output."""

    kind: Literal["agent"]
    agent: str = Field(description="An agent of gateway.yaml's agents: section.")
    prompt: str = Field(description="jinja2 template of the message's text.")
    output: OutputFormat = Field(
        "text", description="text: the reply's text parts joined (data parts as JSON); json: "
        "its data part (several: a list of them), else its text parsed as JSON.")


class TransformStepSpec(StepBaseSpec):
    """A jinja2 expression over what the step can see; its value is the output."""

    kind: Literal["transform"]
    expression: str


class BranchCaseSpec(Spec):
    when: str = Field(description="jinja2 expression; the first true case wins.")
    then: list[str] = Field(description="Steps to run; the others this branch lists are skipped.")


class BranchStepSpec(StepBaseSpec):
    """Chooses which of the steps it lists run next; its output is the chosen names."""

    kind: Literal["branch"]
    cases: Annotated[list[BranchCaseSpec], Field(min_length=1)]
    default: list[str] = Field(default_factory=list, description="When no case is true.")


class MapStepSpec(StepBaseSpec):
    """Runs ``step`` for each item of a list (as `item` and `index`), at most
    ``concurrency`` at a time; the output is the list of results."""

    kind: Literal["map"]
    over: str = Field(description="jinja2 expression giving a list.")
    step: StepSpec
    concurrency: Annotated[int, Field(ge=1, le=256)] = 4
    max_items: Annotated[int, Field(ge=1, le=100_000)] = Field(
        1000, description="The most items it runs; a longer list fails the step (each item "
        "is checkpointed, so a caller's list must not decide how much work is stored)."
    )


class PlannerSpec(Spec):
    """Decides the loop's next action: an expression, or a model asked with a prompt.

    Either way the answer is the name of an action, or ``done``."""

    expression: str | None = None
    model: str | None = None
    prompt: str | None = None
    system: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> PlannerSpec:
        if (self.expression is None) == (self.model is None):
            raise PydanticCustomError(
                "planner_kind", "a planner needs exactly one of expression or model", {}
            )
        if self.model is not None and self.prompt is None:
            raise PydanticCustomError("planner_kind", "a model planner needs a prompt", {})
        return self


class LoopStepSpec(StepBaseSpec):
    """A planner chooses the next action from the results so far, until it says ``done``
    or ``max_iterations`` actions have run."""

    kind: Literal["loop"]
    max_iterations: Annotated[int, Field(ge=1, le=100)] | None = Field(
        None, description="Required: the hard cap on actions run."
    )
    planner: PlannerSpec
    actions: dict[str, StepSpec] = Field(min_length=1)


class ApproversSpec(Spec):
    """Who may decide an approval: these keys, and every key of these teams (and admin
    keys). Written down, the key that started the execution is not one of them unless
    it is named: an app must not approve its own request."""

    keys: list[str] = Field(default_factory=list, description="Key names.")
    teams: list[str] = Field(default_factory=list, description="Team names.")

    @model_validator(mode="after")
    def _someone(self) -> ApproversSpec:
        if not self.keys and not self.teams:
            raise PydanticCustomError(
                "approvers_empty", "approvers names no key and no team", {})
        return self


class ApprovalStepSpec(StepBaseSpec):
    """Waits for a person to approve or reject (POST .../approvals), or ``timeout_s``."""

    kind: Literal["approval"]
    message: str = Field(description="jinja2 template shown to the approver.")
    timeout_s: Annotated[float, Field(gt=0)] = Field(86400.0, description="How long it waits.")
    default: Literal["approve", "reject"] = Field(
        "reject", description="The decision when nobody decided in time."
    )
    approvers: ApproversSpec | None = Field(
        None, description="Who may decide (and admin keys). Left out: the key that started "
        "the execution, and admin keys."
    )


class PipelineStepSpec(StepBaseSpec):
    """Runs another pipeline with the given input; its output is the step's."""

    kind: Literal["pipeline"]
    pipeline: str
    input: Any = Field(default_factory=dict, description="Templated like an http body.")


class PythonStepSpec(StepBaseSpec):
    """Awaits an importable async function with keyword arguments."""

    kind: Literal["python"]
    function: str = Field(
        description="module:function, importable where aigw runs.",
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
    )
    args: dict[str, Any] = Field(default_factory=dict, description="Templated arguments.")


StepSpec = Annotated[
    LlmStepSpec
    | HttpStepSpec
    | TransformStepSpec
    | BranchStepSpec
    | MapStepSpec
    | EnsembleStepSpec
    | CascadeStepSpec
    | LoopStepSpec
    | ApprovalStepSpec
    | PipelineStepSpec
    | PythonStepSpec
    | AgentStepSpec,
    Field(discriminator="kind"),
]

STEP_KINDS: tuple[str, ...] = (
    "llm", "http", "transform", "branch", "map", "ensemble", "cascade", "loop", "approval",
    "pipeline", "python", "agent",
)


class PipelineSpec(Spec):
    """pipelines/<name>.yaml: the file's stem is the pipeline's name."""

    description: str | None = None
    input: JsonSchemaDocument = Field(
        default_factory=lambda: {"type": "object"}, description="JSON Schema of the input."
    )
    steps: dict[str, StepSpec] = Field(min_length=1)
    output: Any = Field(
        description="The result: a template, or a mapping or list of them, over input and steps."
    )
    output_schema: JsonSchemaDocument | None = Field(
        None, description="JSON Schema the pipeline's output must satisfy."
    )


MapStepSpec.model_rebuild()
LoopStepSpec.model_rebuild()
PipelineSpec.model_rebuild()
