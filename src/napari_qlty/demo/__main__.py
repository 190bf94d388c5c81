"""``python -m napari_qlty.demo``: the paper's loop on the synthetic tomogram."""

import sys

from .loop import main

sys.exit(main())
