"""gv50_gevent: a gateway between Queclink GV50 trackers and MongoDB."""

__version__ = "0.1.0"
