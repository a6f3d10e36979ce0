"""Bridges to other flow-matching ecosystems (flow_matching, diffusers).

Each submodule imports its third-party package on first use and says what to ``pip install``
when it is missing; ``import kinetic_fm`` never imports them.
"""
