"""Jailed Python workers (nsjail): persistent state per run, forkable, tool calls proxied to the host."""
