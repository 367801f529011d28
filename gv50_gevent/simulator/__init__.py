"""The GV50 device simulator shared by the tests, the CLI demos and the benchmarks.

* `SimTracker` (tracker.py): one device: the lines it writes, its SACK buffer and +BUFF replay,
  its answers to commands, and a real TCP connection driven by gevent.
* `Fleet` / `FleetConfig` / `run_fleet` (fleet.py): many trackers in one process at an offered rate.
* `python -m gv50_gevent.simulator --help` (__main__.py): the command line.

Names are loaded on first use, so `python -m gv50_gevent.simulator` can monkey-patch before
anything else is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .fleet import Fleet, FleetConfig, Latencies, run_fleet  # noqa: F401
    from .tracker import BUFFER_LIMIT, PROTOCOL_VERSION, RTO_NAMES, Behaviour, SimTracker, device_time  # noqa: F401

_EXPORTS = {
    "Fleet": "fleet", "FleetConfig": "fleet", "Latencies": "fleet", "run_fleet": "fleet",
    "SimTracker": "tracker", "Behaviour": "tracker", "BUFFER_LIMIT": "tracker", "PROTOCOL_VERSION": "tracker",
    "RTO_NAMES": "tracker", "device_time": "tracker",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module
    return getattr(import_module(f"{__name__}.{module}"), name)
