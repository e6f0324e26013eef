"""Jailed Python workers (nsjail): per-run state, copy-on-write forks, proxied tools."""
