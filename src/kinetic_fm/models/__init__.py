"""models layer of kinetic_fm (see docs/ARCHITECTURE.md)."""
