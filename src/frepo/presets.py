"""`frepo.presets` as an importable name: `import frepo.presets`, `from frepo.presets import resolve`.

The presets live in `frepo.config.presets` (beside the configs they fill); the README and the API say
`frepo.presets`, which a bare `import frepo` reaches as an attribute, but an import statement looks for a
module of that name. This module is that name for the same module object, so a setting patched through
one name is seen through the other.
"""

import sys

from .config import presets

sys.modules[__name__] = presets
