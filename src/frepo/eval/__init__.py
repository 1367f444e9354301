"""Evaluation: train fresh networks on a distilled set and report test accuracy (mean ± std).

Protocols are plug-ins (`frepo.eval.protocols`); an `EvalConfig` says which, on which
architectures, with how many models and which options; `evaluate_set` runs one architecture on
tensors already in the set's preprocessed space; results are `EvalResult`s with their tables
(`frepo.eval.results`). Reading files and datasets is the caller's job (`frepo.evaluate`), so
distillation can validate with this package without importing any foreign-format reader.
"""

from .config import EvalConfig
from .protocols import PROTOCOLS
from .protocols.frepo import reference_steps
from .results import EvalResult
from .run import evaluate_set

__all__ = ["PROTOCOLS", "EvalConfig", "EvalResult", "evaluate_set", "reference_steps"]
