"""The package's version, below every layer: run manifests (``runs``) and reports (``studies``)
record it without importing the package's front door, ``kinetic_fm/__init__.py``, which sits on
top of the layers. pyproject.toml reads the package's version from here."""
__version__ = "0.1.0"
