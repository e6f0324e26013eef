"""Teacher trajectories (first-thought prefix), filtering, SFT/LoRA, export for vLLM."""
