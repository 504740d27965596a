"""Device agent: verified, journaled, A/B model updates from the control plane (see agent.py)."""
