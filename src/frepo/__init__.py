"""frepo: dataset distillation by neural feature regression with a model pool (FRePo, NeurIPS 2022).

The public API, re-exported explicitly; the rooms behind it are described in the README ("Architecture").
"""

from .apps.continual import ContinualConfig, continual
from .apps.privacy import PrivacyConfig, privacy
from .base.errors import FrepoError, Interrupted
from .base.version import __version__
from .config import DataConfig, DistillConfig, ModelConfig, PoolConfig, presets
from .eval import EvalConfig, EvalResult
from .io.artifact import DistilledSet, load_distilled, save_distilled
from .io.export import export
from .jobs.distill import DistillResult, distill
from .jobs.evaluate import SourceConfig, evaluate, evaluate_archs
from .jobs.subset import make_subset

__all__ = [
    "ContinualConfig",
    "DataConfig",
    "DistillConfig",
    "DistillResult",
    "DistilledSet",
    "EvalConfig",
    "EvalResult",
    "FrepoError",
    "Interrupted",
    "ModelConfig",
    "PoolConfig",
    "PrivacyConfig",
    "SourceConfig",
    "__version__",
    "continual",
    "distill",
    "evaluate",
    "evaluate_archs",
    "export",
    "load_distilled",
    "make_subset",
    "presets",
    "privacy",
    "save_distilled",
]
