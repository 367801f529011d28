"""Start the gv50_gevent gateway: `python run_server.py` (settings from the environment or `.env`)."""

from gevent import monkey

monkey.patch_all()  # before anything else is imported: pymongo and sockets must cooperate with gevent

import sys  # noqa: E402

from gv50_gevent.app import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
