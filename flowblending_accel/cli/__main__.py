"""``python -m flowblending_accel.cli`` is ``flowblending-accel``."""

import sys

from . import main

sys.exit(main())
