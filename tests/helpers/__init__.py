"""Test helpers shared across areas (scripted model server, tiny models, vLLM server)."""
