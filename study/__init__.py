"""The distillation study: the whole pipeline on real models at CPU scale, resumable.

`run_study(cfg, out, backend)` runs questions -> teacher generation (agent and CoT, several
sampled attempts) -> build-data -> SFT -> export -> serve -> eval -> compare, skipping the
stages already complete (study.pipeline). The composition root (`distillery study run`)
provides the `Backend` that builds model runtimes. Importing the package loads no heavy
dependency.
"""

from study.config import PRESETS, ConfigError, ModelSpec, StudyConfig, load_config, preset
from study.harvest import HarvestError, harvest_source, reuse_harvest
from study.pack import PackError, pack_study, unpack_study
from study.pipeline import (
    Backend,
    BudgetSpent,
    Study,
    StudyError,
    report_study,
    run_study,
    split_of,
)
from study.serving import ServeError, VLLMServer

__all__ = [
    "PRESETS",
    "Backend",
    "BudgetSpent",
    "ConfigError",
    "HarvestError",
    "ModelSpec",
    "PackError",
    "ServeError",
    "Study",
    "StudyConfig",
    "StudyError",
    "VLLMServer",
    "harvest_source",
    "load_config",
    "pack_study",
    "preset",
    "report_study",
    "reuse_harvest",
    "run_study",
    "split_of",
    "unpack_study",
]
