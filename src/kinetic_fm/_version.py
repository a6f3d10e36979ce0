"""The package's version, below every layer: run manifests (``runs``) and reports (``studies``)
record it without importing the package's front door, ``kinetic_fm/__init__.py``, which sits on
top of the layers. Keep it equal to ``version`` in pyproject.toml."""
__version__ = "0.1.0"
