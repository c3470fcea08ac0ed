"""JSON Schemas for the YAML files, generated from the spec models (for editors and CI)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from .gateway_spec import GatewaySpec
from .pipeline_spec import PipelineSpec
from .spec import SectionsSpec

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def json_schemas() -> Mapping[str, str]:
    """File name to JSON text, for every schema aigw publishes."""
    documents = {
        "gateway.schema.json": _schema(GatewaySpec, "aigw gateway.yaml (version 1)"),
        "include.schema.json": _schema(SectionsSpec, "aigw included config file (version 1)"),
        "pipeline.schema.json": _schema(PipelineSpec, "aigw pipeline (pipelines/<name>.yaml)"),
    }
    return {
        name: json.dumps(doc, indent=2, sort_keys=True) + "\n" for name, doc in documents.items()
    }


def _schema(model: type[BaseModel], title: str) -> dict[str, Any]:
    document = model.model_json_schema(mode="validation")
    document["$schema"] = SCHEMA_DIALECT
    document["title"] = title
    return document
