"""``python -m kinetic_fm ...``: the ``kfm`` command of this interpreter's kinetic_fm (a virtual
environment's ``kfm`` script can run another installation's)."""
import sys

from .cli import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
