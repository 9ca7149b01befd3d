"""``python -m napari_dropsembles.cli``."""

import sys

from . import main

sys.exit(main())
