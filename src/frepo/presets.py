"""`frepo.presets` as an import path: the README names it so (`from frepo.presets import resolve`); the module
lives in `frepo.config.presets`, and this name is that same module object, not a copy."""

import sys

from .config import presets

sys.modules[__name__] = presets
