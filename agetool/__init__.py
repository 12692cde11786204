"""agetool: age progression across the lifespan with the LATS generator.

    import agetool

    pipe = agetool.AgingPipeline.from_pretrained(model="female")
    result = pipe("examples/astronaut.png", ages=[5, 20.5, "30-39"])
    result.grid().save("grid.png")

Names load on first use, so ``import agetool`` stays light.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

_EXPORTS = {
    "AgingPipeline": "agetool.pipeline",
    "AgingResult": "agetool.results",
    "AgeEstimate": "agetool.results",
    "Face": "agetool.results",
    "EncodedPhoto": "agetool.results",
    "FaceEstimate": "agetool.results",
    "AGE_CLASSES": "agetool.ages",
    "DEFAULT_ANCHORS": "agetool.ages",
    "parse_ages": "agetool.ages",
    "evaluate": "agetool.eval.run",
    "FaceIdentity": "agetool.identity",
    "FaceReference": "agetool.identity",
    "errors": "agetool.errors",
    "AgetoolError": "agetool.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'agetool' has no attribute {name!r}")
    mod = importlib.import_module(module)
    value = mod if name == module.rsplit(".", 1)[-1] else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
