"""The operator's command line (`gv50ctl`, or `python -m gv50_gevent.cli`): queue and cancel
commands for trackers, and look at what the gateways wrote and are doing.

    gv50ctl [--uri URI] [--db NAME] [--env-file PATH] [--json] COMMAND ...

    send IMEI TYPE [--param k=v ...] [--params-json '{...}'] [--expires-in S] [--max-attempts N]
                   [--force] [--wait [--timeout S]]
    show COMMAND_ID
    commands IMEI [--limit N]
    cancel COMMAND_ID
    devices [--online] [--skip N] [--limit N]
    position IMEI
    messages IMEI [--since 1h] [--limit N]
    tail [IMEI ...]
    status
    device IMEI
    export IMEI --from TIME [--to TIME] [--format gpx|kml|geojson|csv] [--output FILE]
    health [--gateway-id ID] [--max-age S]
    profile set|show|assign NAME ...
    rollout NAME [--watch]

Plain pymongo, no gevent. MongoDB comes from the gateway's own settings (MONGODB_URI, MONGODB_DB,
from the environment or `.env` in the current folder, or --env-file); with MONGODB_URI unset, the
embedded default on MONGOD_PORT. `--json` prints JSON (ISO 8601 times, ids as strings).

Exit codes: 0 done; 1 a negative answer (command not acknowledged, nothing to cancel, no
position yet, no gateway running); 2 bad usage, settings or parameters; 3 `--wait` timed out;
4 unknown IMEI or command; 5 MongoDB unreachable or failing.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from pymongo.errors import PyMongoError

from . import commands, device, export, fleet, status, trackers
from .base import MONGO, CliError, HelpFormatter, scrub
from .send_help import EXAMPLE_PARAMS, example_command
from .trackers import frame_type

__all__ = ["main", "build_parser", "EXAMPLE_PARAMS", "example_command", "frame_type"]

# One module per group of verbs, each with `register(add)` (`add(name, help)` gives a verb's parser
# with the shared options); their order is the order of `--help`.
VERB_GROUPS = (commands, trackers, device, export, status, fleet)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--uri", default=argparse.SUPPRESS,
                        help="MongoDB URI (default: MONGODB_URI, else the embedded MongoDB on MONGOD_PORT)")
    common.add_argument("--db", default=argparse.SUPPRESS, help="database name (default: MONGODB_DB, gv50)")
    common.add_argument("--env-file", default=argparse.SUPPRESS, metavar="PATH",
                        help="settings file (default: .env in the current folder, if there is one)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print JSON instead of text (default: text)")
    parser = argparse.ArgumentParser(prog="gv50ctl", description=__doc__.split("\n\n")[0], parents=[common],
                                     formatter_class=HelpFormatter,
                                     epilog="Run `gv50ctl COMMAND --help` for the options of one command.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help_, description=help_[:1].upper() + help_[1:] + ".",
                              formatter_class=HelpFormatter, **kw)

    for group in VERB_GROUPS:
        group.register(add)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name, default in (("uri", None), ("db", None), ("json", False), ("env_file", None)):
        if not hasattr(args, name):
            setattr(args, name, default)
    try:
        return int(args.func(args))
    except CliError as exc:
        if args.json:
            print(json.dumps({"error": str(exc), "exit_code": exc.code}), flush=True)
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except PyMongoError as exc:
        print(f"error: MongoDB failed: {scrub(str(exc), getattr(args, 'effective_uri', ''))[:300]}", file=sys.stderr)
        return MONGO
    except KeyboardInterrupt:
        return 130
