"""frepo: dataset distillation by neural feature regression with a model pool (FRePo, NeurIPS 2022).

The public API, re-exported explicitly; the rooms behind it are described in the README ("Architecture").
"""

import importlib
from typing import TYPE_CHECKING

from .base.version import __version__

if TYPE_CHECKING:  # the names, for type checkers and editors; at run time each loads on first use
    from .apps.continual import ContinualConfig, continual
    from .apps.privacy import PrivacyConfig, privacy
    from .base.errors import FrepoError, FrepoWarning, Interrupted
    from .config import DataConfig, DistillConfig, ModelConfig, PoolConfig, presets
    from .eval import EvalConfig, EvalResult
    from .io.artifact import DistilledSet, load_distilled, save_distilled
    from .io.foreign.exports import load_export
    from .jobs.distill import DistillResult, distill
    from .jobs.evaluate import SourceConfig, evaluate, evaluate_archs
    from .jobs.export import export
    from .jobs.subset import make_subset

# name -> the module that defines it. `import frepo` loads none of them (torch takes seconds): the command line
# loads the library where Ctrl-C during the load is one line, not a traceback (frepo.cli.main).
_EXPORTS = {
    "ContinualConfig": ".apps.continual",
    "continual": ".apps.continual",
    "PrivacyConfig": ".apps.privacy",
    "privacy": ".apps.privacy",
    "FrepoError": ".base.errors",
    "FrepoWarning": ".base.errors",
    "Interrupted": ".base.errors",
    "DataConfig": ".config",
    "DistillConfig": ".config",
    "ModelConfig": ".config",
    "PoolConfig": ".config",
    "EvalConfig": ".eval",
    "EvalResult": ".eval",
    "DistilledSet": ".io.artifact",
    "load_distilled": ".io.artifact",
    "save_distilled": ".io.artifact",
    "DistillResult": ".jobs.distill",
    "distill": ".jobs.distill",
    "SourceConfig": ".jobs.evaluate",
    "evaluate": ".jobs.evaluate",
    "evaluate_archs": ".jobs.evaluate",
    "export": ".jobs.export",
    "load_export": ".io.foreign.exports",
    "make_subset": ".jobs.subset",
}
_MODULES = {"presets": ".config.presets"}
# The subpackages too, as `frepo.data.load_dataset` reaches one after a bare `import frepo`.
_SUBPACKAGES = ("apps", "base", "cli", "config", "data", "eval", "io", "jobs", "method", "models")
_MODULES.update({name: f".{name}" for name in _SUBPACKAGES})


def __getattr__(name: str):
    if name in _MODULES:
        value = importlib.import_module(_MODULES[name], __name__)
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    else:
        raise AttributeError(f"module 'frepo' has no attribute {name!r}")
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "ContinualConfig",
    "DataConfig",
    "DistillConfig",
    "DistillResult",
    "DistilledSet",
    "EvalConfig",
    "EvalResult",
    "FrepoError",
    "FrepoWarning",
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
    "load_export",
    "make_subset",
    "presets",
    "privacy",
    "save_distilled",
]
