"""Start the gv50_gevent gateway: `python run_server.py [--env-file PATH]`, the same as the
installed `gv50-gateway` (settings from the environment, or `.env` in the current folder)."""

import sys

from gv50_gevent.server_main import main  # patches gevent first, before anything else is imported

if __name__ == "__main__":
    sys.exit(main())
