"""`python -m gv50_gevent.cli`: the same as `gv50ctl`."""

import sys

from . import main

sys.exit(main())
