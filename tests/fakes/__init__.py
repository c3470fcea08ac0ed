"""Upstream fakes: small servers on loopback that speak each provider's real wire format."""
