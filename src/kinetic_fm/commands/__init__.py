"""Sub-commands of the ``kfm`` CLI, one module each (see ``kinetic_fm.cli``)."""
