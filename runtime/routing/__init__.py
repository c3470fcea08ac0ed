"""Routing and resilience: candidate order, the attempt loop, circuit breakers, live stats."""
