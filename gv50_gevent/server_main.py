"""The `gv50-gateway` command (and `python run_server.py`, `python -m gv50_gevent`): gevent's
monkey-patching first, then the gateway. Nothing else may be imported before the patch: pymongo's
sockets and locks must be gevent's, or one blocking call would stall every tracker."""

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402


def main() -> int:
    from .app import main as app_main

    return app_main(sys.argv[1:])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
