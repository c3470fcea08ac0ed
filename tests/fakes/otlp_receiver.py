"""A loopback OTLP/HTTP trace receiver: decodes ExportTraceServiceRequest protobufs.

A span's ``kind`` is OTLP's number (2 SERVER, 3 CLIENT), its ``status`` (code, message)
OTLP's (2 ERROR), its ``links`` the (trace id, span id) of each."""

from __future__ import annotations

from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


class OtlpReceiver:
    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.app = Starlette(routes=[
            Route("/__ready", self._ready),
            Route("/v1/traces", self._traces, methods=["POST"]),
        ])

    async def _ready(self, request: Request) -> Response:
        return Response("ok")

    async def _traces(self, request: Request) -> Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.body())
        for resource in message.resource_spans:
            for scope in resource.scope_spans:
                for span in scope.spans:
                    self.spans.append({
                        "name": span.name,
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "attributes": {a.key: _value(a.value) for a in span.attributes},
                        "kind": span.kind,
                        "status": (span.status.code, span.status.message),
                        "links": [(link.trace_id.hex(), link.span_id.hex())
                                  for link in span.links],
                    })
        return Response(ExportTraceServiceResponse().SerializeToString(),
                        media_type="application/x-protobuf")


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    return getattr(value, kind) if kind else None
