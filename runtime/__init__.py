"""The aigw runtime: serves a compiled Graph over HTTP."""
