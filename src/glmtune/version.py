"""glmtune's version: a leaf module, so that code saving it (method files, export manifests) imports nothing above.

Keep it equal to ``version`` in pyproject.toml (tests/test_layers.py checks that they match).
"""

__version__ = "0.1.0"
