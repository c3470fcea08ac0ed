"""Telemetry: Prometheus metrics, one JSON log line per request, and optional OTel traces."""
