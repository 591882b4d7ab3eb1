"""``python -m training``: see :mod:`training.train`."""

import sys

from training.train import main

sys.exit(main())
