"""The model card names its training data by description or file name, never by a path of
the machine that trained it (a committed card must not leak /root/... or a user's home)."""

from __future__ import annotations

from training.export import model_card

INFO = {
    "name": "student",
    "method": "lora",
    "format": "adapter",
    "base_model": "smollm2-135m-instruct",
    "training": {
        "settings": {"data": ["/root/runs/s1/data/agent.jsonl", "/home/ada/mix/cot.jsonl"],
                     "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
                     "target_modules": "all-linear", "max_length": 4096},
        "data": {"examples": 24, "kinds": {"agent": 24}, "tokens": 9754},
        "metrics": {},
    },
}


def test_the_card_shows_file_names_not_paths() -> None:
    card = model_card(INFO)
    assert "`agent.jsonl`, `cot.jsonl`" in card
    assert "/root" not in card and "/home" not in card


def test_a_recorded_description_wins() -> None:
    info = {**INFO, "training": {**INFO["training"], "data": {
        **INFO["training"]["data"], "description": "24 teacher trajectories on arithmetic"}}}
    card = model_card(info)
    assert "- data: 24 teacher trajectories on arithmetic: 24 conversations" in card
    assert "agent.jsonl" not in card
