"""What a deployment serves (``kind``: chat, embeddings, rerank, image, moderation,
transcription, speech, realtime), checked as ``link`` runs.

A provider type serves the kinds its API has and its adapter speaks: a rerank, image,
moderation or audio deployment on a provider without that API, or a chat one on ``cohere`` (whose
adapter speaks only rerank), would fail every request; it is refused here instead. A
group serves one kind: a request uses only the members of its own kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from . import codes
from .diagnostics import DiagnosticSink
from .spec import DeploymentSpec, GroupSpec

if TYPE_CHECKING:
    from .link import Entry

# Provider types with no embeddings API the gateway speaks (AGW321).
NO_EMBEDDINGS = frozenset({"anthropic", "bedrock", "vertex"})
# Provider types whose rerank API the gateway speaks: Cohere's /v2/rerank, the
# Cohere/Jina-shaped /rerank of OpenAI-compatible servers (vLLM, Jina, Infinity, TEI
# behind a compatible front), and echo's local scoring.
RERANKS = frozenset({"cohere", "openai_compatible", "vllm", "echo"})
# Provider types that serve rerank and nothing else here.
RERANK_ONLY = frozenset({"cohere"})
_RERANK_HINT = ("serve rerank from a provider that has it: cohere, or a vllm or "
                "openai_compatible server with a /rerank endpoint")
# Provider types whose OpenAI-shaped /images/generations the gateway speaks (echo draws
# offline); Anthropic, Gemini, Bedrock and Vertex have none in that shape, vLLM none.
IMAGES = frozenset({"openai", "azure_openai", "openai_compatible", "echo"})
# And /moderations: Azure OpenAI has none (its deployments answer 404 there; it filters
# content on every call instead, and Azure AI Content Safety is another API).
MODERATES = frozenset({"openai", "openai_compatible", "echo"})
# The audio APIs (OpenAI's /audio/transcriptions and /audio/translations, /audio/speech,
# as OpenAI, Azure OpenAI and compatible servers such as speaches serve them; vLLM serves
# transcriptions, not speech), and echo's offline ones.
TRANSCRIBES = frozenset({"openai", "azure_openai", "openai_compatible", "vllm", "echo"})
SPEAKS = frozenset({"openai", "azure_openai", "openai_compatible", "echo"})
# OpenAI's Realtime WebSocket (/v1/realtime?model=), as OpenAI, Azure OpenAI (its
# /openai/realtime) and compatible servers serve it; echo has none: a session is relayed
# to a real upstream, and there is nothing offline to relay to.
REALTIME = frozenset({"openai", "azure_openai", "openai_compatible"})
SERVES = {"rerank": RERANKS, "image": IMAGES, "moderation": MODERATES,
          "transcription": TRANSCRIBES, "speech": SPEAKS, "realtime": REALTIME}
_HINTS = {"rerank": _RERANK_HINT,
          "image": "serve images from openai, azure_openai or an openai_compatible server "
                   "with /images/generations",
          "moderation": "serve moderation from openai or an openai_compatible server with "
                        "/moderations (Azure OpenAI filters content on its own calls instead)",
          "transcription": "serve transcription from a provider that has it: "
                           + ", ".join(sorted(TRANSCRIBES - {"echo"})),
          "speech": "serve speech from a provider that has it: "
                    + ", ".join(sorted(SPEAKS - {"echo"})),
          "realtime": "serve realtime sessions from a provider that has OpenAI's Realtime "
                      "API: " + ", ".join(sorted(REALTIME))}
_APIS = {"rerank": "rerank API", "image": "image generation API",
         "moderation": "moderation API", "transcription": "transcription API",
         "speech": "speech API", "realtime": "Realtime API"}
# Every kind, in the order diagnostics list them.
KINDS = ("chat", "embeddings", "rerank", "image", "moderation", "transcription", "speech",
         "realtime")


def check_deployment_kind(entry: Entry[DeploymentSpec], provider_type: str,
                          sink: DiagnosticSink) -> None:
    """A deployment whose provider's type cannot serve its kind."""
    kind, provider = entry.spec.kind, entry.spec.provider
    if kind != "rerank" and provider_type in RERANK_ONLY:
        sink.add(codes.KIND_NOT_SERVED,
                 f"deployment '{entry.name}' serves {kind}, but provider '{provider}' of type "
                 f"'{provider_type}' serves rerank only", entry.key(),
                 f"add kind: rerank, or serve {kind} from another provider")
    elif kind == "embeddings" and provider_type in NO_EMBEDDINGS:
        sink.add(
            codes.NO_EMBEDDINGS_API,
            f"deployment '{entry.name}' serves embeddings, but provider '{provider}' "
            f"of type '{provider_type}' has no embeddings API",
            entry.value("kind"),
            "serve embeddings from a provider that has them (openai, azure_openai, vllm, ...)",
        )
    elif kind in SERVES and provider_type not in SERVES[kind]:
        sink.add(codes.KIND_NOT_SERVED,
                 f"deployment '{entry.name}' serves {kind}, but provider '{provider}' of type "
                 f"'{provider_type}' has no {_APIS[kind]}", entry.value("kind"), _HINTS[kind])


def check_group_kinds(
    groups: Mapping[str, Entry[GroupSpec]],
    deployments: Mapping[str, Entry[DeploymentSpec]],
    sink: DiagnosticSink,
) -> None:
    """Chat requests use a group's chat deployments, embeddings requests its embeddings
    ones, and so on for each kind: a group of several kinds, or a fallback to a
    group of another kind, serves some requests with fewer deployments than it lists,
    with nothing said until they fail."""
    kinds: dict[str, set[str]] = {
        name: {deployments[m].spec.kind for m in entry.spec.members if m in deployments}
        for name, entry in groups.items()
    }
    for name, entry in groups.items():
        if len(kinds[name]) > 1:
            listed = "; ".join(
                f"{kind}: " + ", ".join(m for m in entry.spec.members
                                        if m in deployments and deployments[m].spec.kind == kind)
                for kind in KINDS if kind in kinds[name])
            sink.add(codes.GROUP_MIXED_KINDS,
                     f"group '{entry.name}' mixes deployments of several kinds ({listed}); "
                     "each request uses only those of its kind", entry.value("members"),
                     "keep the models of each kind in groups of their own")
            continue
        for path, fallback in entry.spec.fallback_references():
            theirs = kinds.get(fallback, set())
            if len(kinds[name]) == 1 and len(theirs) == 1 and theirs != kinds[name]:
                sink.add(codes.GROUP_MIXED_KINDS,
                         f"group '{entry.name}' serves {next(iter(kinds[name]))} but falls back "
                         f"to group '{fallback}', which serves {next(iter(theirs))}: no request "
                         "that fails over finds a deployment there", entry.value(*path),
                         "fall back to a group of the same kind")
