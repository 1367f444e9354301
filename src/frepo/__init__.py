"""frepo: dataset distillation by neural feature regression with a model pool (FRePo, NeurIPS 2022)."""

__version__ = "0.1.0"

from . import presets  # noqa: E402
from .artifact import DistilledSet, load_distilled, save_distilled  # noqa: E402
from .config import DataConfig, DistillConfig, ModelConfig, PoolConfig  # noqa: E402
from .distill import DistillResult, distill  # noqa: E402
from .errors import FrepoError, Interrupted  # noqa: E402
from .evaluate import EvalResult, evaluate, evaluate_archs  # noqa: E402
from .subset import make_subset  # noqa: E402

__all__ = [
    "DataConfig",
    "DistillConfig",
    "DistillResult",
    "DistilledSet",
    "EvalResult",
    "FrepoError",
    "Interrupted",
    "ModelConfig",
    "PoolConfig",
    "__version__",
    "distill",
    "evaluate",
    "evaluate_archs",
    "load_distilled",
    "make_subset",
    "presets",
    "save_distilled",
]
