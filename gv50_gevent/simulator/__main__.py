"""`python -m gv50_gevent.simulator`: run a fleet of simulated GV50s against a gateway and print a
summary (a table, or one JSON document with --json). SIGINT/SIGTERM end the run early, with a report."""

from gevent import monkey

monkey.patch_all()  # before anything else is imported

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402

from .fleet import Fleet, FleetConfig  # noqa: E402
from .tracker import Behaviour  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gv50_gevent.simulator", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5004)
    p.add_argument("--devices", type=int, default=10, help="trackers (one TCP connection each)")
    p.add_argument("--rate", type=float, default=10.0, help="GTFRI per second, whole fleet (0 = none)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of sending, after the ramp")
    p.add_argument("--heartbeat", type=float, default=0.0, help="seconds between heartbeats per tracker (0 = none)")
    p.add_argument("--imei-base", type=int, default=860000000000000, help="IMEI of the first tracker; +1 each")
    p.add_argument("--ramp", type=float, default=None,
                   help="seconds to open all connections (default 1 ms/device, max 10)")
    p.add_argument("--hex", action="store_true", help="HEX mode: reports, events and heartbeats as HEX frames "
                   "(default: ASCII)")
    p.add_argument("--sack", action="store_true", help="SACK enabled: keep reports until +SACK, replay them as +BUFF")
    p.add_argument("--drain", type=float, default=5.0, help="seconds to wait for the last SACKs")
    p.add_argument("--silent", action="store_true", help="never acknowledge commands")
    p.add_argument("--ack-delay", type=float, default=0.0, metavar="S", help="acknowledge commands S seconds late")
    p.add_argument("--duplicate-ack", action="store_true", help="send every command ACK twice")
    p.add_argument("--disconnect-after", type=int, default=None, metavar="N",
                   help="drop each tracker's first connection after N messages")
    p.add_argument("--disconnect-on-command", action="store_true", help="drop the connection when a command arrives")
    p.add_argument("--reconnect-delay", type=float, default=1.0, metavar="S")
    p.add_argument("--backlog", type=int, default=0, metavar="N",
                   help="reconnect storm: each tracker starts with N buffered reports and replays them as +BUFF")
    p.add_argument("--replay-bytes", type=int, default=None, metavar="B",
                   help="write a replayed buffer B bytes at a time (default: 50 lines per write)")
    p.add_argument("--list-sacked", action="store_true", help="with --json: list every SACKed report line")
    p.add_argument("--json", action="store_true", help="print the report as one JSON document")
    p.add_argument("--progress", type=float, default=5.0, metavar="S",
                   help="print a progress line to stderr every S seconds (default 5; 0 = none)")
    return p


def _raise_fd_limit(devices: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if devices + 64 > soft:
        print(f"warning: {devices} devices need more file descriptors than the limit of {soft}", file=sys.stderr)


def _summary(report: dict[str, Any]) -> str:
    keys = ("devices", "connected", "connect_failures", "window_s", "offered_rate", "achieved_rate", "sent",
            "fri_sent", "heartbeats_sent", "heartbeat_replies", "acks_sent", "resp_sent", "replayed",
            "sacks_received", "sacked", "unsacked", "buffer_dropped", "commands", "bad_commands", "connects",
            "disconnects", "dropped_by_peer", "heartbeats_unanswered", "skipped")
    lines = [f"{key:<18} {report[key]}" for key in keys]
    lat = report["sack_latency_ms"]
    if lat.get("n"):
        lines.append(f"{'sack_latency_ms':<18} p50 {lat['p50']}  p95 {lat['p95']}  p99 {lat['p99']}  max {lat['max']}")
    for entry in report["command_log"][:20]:
        lines.append(f"command  {entry['imei']}  {entry['arrived_at']}  acked {entry['acked_at'] or '-'}  "
                     f"{entry['line']}")
    return "\n".join(lines)


def _progress(fleet: Fleet, every: float) -> None:
    """One line every `every` seconds, so a long run shows it is alive and how it goes."""
    started = time.monotonic()
    while True:
        gevent.sleep(every)
        trackers = fleet.trackers
        connected = sum(1 for t in trackers if t.sock is not None)
        sent = sum(t.sent for t in trackers)
        sacked = sum(t.sacked_count for t in trackers)
        commands = sum(len(t.commands) for t in trackers)
        acks = sum(t.acks_sent for t in trackers)
        print(f"{time.monotonic() - started:6.0f}s  connected {connected}/{len(trackers)}  sent {sent:,}  "
              f"SACKed {sacked:,}  commands {commands:,}  answered {acks:,}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    behaviour = Behaviour(sack=args.sack, hex=args.hex, track_sacked=args.list_sacked and args.sack,
                          silent=args.silent, ack_delay=args.ack_delay, duplicate_ack=args.duplicate_ack,
                          disconnect_after=args.disconnect_after, disconnect_on_command=args.disconnect_on_command,
                          replay_bytes=args.replay_bytes)
    config = FleetConfig(host=args.host, port=args.port, devices=args.devices, rate=args.rate,
                         duration=args.duration, heartbeat=args.heartbeat, imei_base=args.imei_base, ramp=args.ramp,
                         drain=args.drain, reconnect_delay=args.reconnect_delay, backlog=args.backlog,
                         behaviour=behaviour)
    try:
        fleet = Fleet(config)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _raise_fd_limit(args.devices)
    for signum in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(signum, fleet.stop)
    progress = gevent.spawn(_progress, fleet, args.progress) if args.progress > 0 else None
    report = fleet.run()
    if progress is not None:
        progress.kill()
    print(json.dumps(report) if args.json else _summary(report), flush=True)
    return 0 if report["connected"] else 1


if __name__ == "__main__":
    sys.exit(main())
