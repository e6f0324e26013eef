"""The HTTP gateway (FastAPI), its settings, and the distillery CLI."""
