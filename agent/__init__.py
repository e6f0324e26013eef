"""The agent loop: prompts, action parsing, self-consistent action generation, model clients."""
