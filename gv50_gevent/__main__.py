"""`python -m gv50_gevent`: start the gateway, the same as `gv50-gateway`."""

import sys

from gv50_gevent.server_main import main

sys.exit(main())
