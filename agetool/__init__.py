"""agetool: age progression across the lifespan with the LATS generator."""

__version__ = "0.1.0"
