"""`export`: one vehicle's track as a file for Google Earth, QGIS or a spreadsheet: GPX, KML,
GeoJSON or CSV.

Positions (live and `+BUFF`) come from `positions`, whose `_id` is the report's unique key: a
report sent twice, or as `+BUFF` after its `+RESP`, is one document, so an export cannot repeat a
point. Events (ignition on/off, power, ...) become waypoints or placemarks.

Streaming: the documents are read with a cursor, in batches, and each is written as it comes; a
month of 10 s reports is never in memory at once. The files are written by hand, element by
element (the stdlib's `xml.sax.saxutils` escaping, `json`, `csv`): gpxpy and simplekml build the
whole document in memory before writing it. Only what came in before the export started is read
(`received_at`). The positions are read once in every format (KML's track keeps its coordinates
in a temporary file meanwhile), so a point stored during the export cannot make two lists differ.
The cursors do not time out on the server while a slow reader (a pipe) keeps the export waiting.
"""

from __future__ import annotations

import argparse
import csv
import heapq
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta, timezone
from typing import IO, Any
from xml.sax.saxutils import escape

from pymongo import ASCENDING
from pymongo.database import Database

from ..storage.database import EVENTS, POSITIONS
from .base import IMEI_HELP, NEGATIVE, NOT_FOUND, OK, USAGE, AddVerb, check_imei, connect, fail, known_imei, note

Doc = dict[str, Any]
Cursor = Callable[[], Iterator[Doc]]
BATCH = 1000  # documents per cursor batch
POSITION_FIELDS = dict.fromkeys(("fix_time", "sent_at", "count", "index", "location", "altitude_m", "speed_kmh",
                                 "azimuth", "valid", "report", "buffered", "gps_accuracy",
                                 "received_at"), 1) | {"_id": 0}
EVENT_FIELDS = dict.fromkeys(("occurred_at", "sent_at", "count", "type", "report", "location", "buffered",
                              "received_at"), 1) | {"_id": 0}


def utc_text(at: datetime) -> str:
    """`2026-12-07T08:30:00Z`: ISO 8601 in UTC, as xsd:dateTime (GPX, KML) and RFC 3339 want it."""
    at = at.astimezone(timezone.utc) if at.tzinfo else at.replace(tzinfo=timezone.utc)
    return at.isoformat(timespec="milliseconds" if at.microsecond else "seconds").replace("+00:00", "Z")


def lon_lat(doc: Doc) -> tuple[float, float] | None:
    coordinates = (doc.get("location") or {}).get("coordinates")
    if not coordinates or len(coordinates) < 2:
        return None
    lon, lat = float(coordinates[0]), float(coordinates[1])
    return (-180.0 if lon == 180.0 else lon), lat  # GPX's longitude is -180 <= lon < 180


def event_name(doc: Doc) -> str:
    return str(doc.get("type") or "event").replace("_", " ")


def number(value: Any) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


class Counts:
    def __init__(self) -> None:
        self.positions = self.events = self.unplaced = 0

    def placed(self, docs: Iterable[Doc], kind: str) -> Iterator[tuple[Doc, tuple[float, float]]]:
        """The documents that can be drawn, with their (lon, lat); the others are counted as left out."""
        for doc in docs:
            place = lon_lat(doc)
            if place is None:
                self.unplaced += 1
                continue
            if kind == "event":
                self.events += 1
            else:
                self.positions += 1
            yield doc, place


# --- the formats: each writes to `out` as the cursors give ---

def write_gpx(out: IO[str], imei: str, events: Cursor, positions: Cursor, counts: Counts) -> None:
    out.write('<?xml version="1.0" encoding="UTF-8"?>\n'
              '<gpx version="1.1" creator="gv50_gevent" xmlns="http://www.topografix.com/GPX/1/1" '
              'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation='
              '"http://www.topografix.com/GPX/1/1 http://www.topografix.com/GPX/1/1/gpx.xsd">\n'
              f'<metadata><name>{escape(imei)}</name><time>{utc_text(datetime.now(timezone.utc))}</time></metadata>\n')
    for ev, place in counts.placed(events(), "event"):  # the schema wants every waypoint before the track
        out.write(f'<wpt lat="{place[1]!r}" lon="{place[0]!r}"><time>{utc_text(ev["occurred_at"])}</time>'
                  f'<name>{escape(event_name(ev))}</name><desc>{escape(str(ev.get("report") or ""))}</desc>'
                  f'<type>{escape(str(ev.get("type") or ""))}</type></wpt>\n')
    out.write(f"<trk><name>{escape(imei)}</name><trkseg>\n")
    for pos, place in counts.placed(positions(), "position"):
        ele = f"<ele>{number(pos['altitude_m'])}</ele>" if pos.get("altitude_m") is not None else ""
        # A position without a valid fix is the tracker's last known one: said so, not left out.
        fix = "" if pos.get("valid", True) else "<fix>none</fix>"
        out.write(f'<trkpt lat="{place[1]!r}" lon="{place[0]!r}">{ele}<time>{utc_text(pos["fix_time"])}</time>'
                  f"{fix}</trkpt>\n")
    out.write("</trkseg></trk>\n</gpx>\n")


def write_kml(out: IO[str], imei: str, events: Cursor, positions: Cursor, counts: Counts) -> None:
    out.write('<?xml version="1.0" encoding="UTF-8"?>\n'
              '<kml xmlns="http://www.opengis.net/kml/2.2" xmlns:gx="http://www.google.com/kml/ext/2.2">\n'
              f"<Document><name>{escape(imei)}</name>\n<Folder><name>events</name>\n")
    for ev, place in counts.placed(events(), "event"):
        out.write(f"<Placemark><name>{escape(event_name(ev))}</name>"
                  f"<description>{escape(str(ev.get('report') or ''))}</description>"
                  f"<TimeStamp><when>{utc_text(ev['occurred_at'])}</when></TimeStamp>"
                  f"<Point><coordinates>{place[0]!r},{place[1]!r}</coordinates></Point></Placemark>\n")
    # gx:Track (Google Earth's time slider plays it): every <when>, then every <gx:coord>, in the
    # same order. One pass over the positions: the <when>s go out as they come, the <gx:coord>s wait
    # in a temporary file (on disk past 1 MB), so both lists hold the same points.
    out.write(f"</Folder>\n<Placemark><name>{escape(imei)} track</name><gx:Track>\n")
    with tempfile.SpooledTemporaryFile(max_size=1 << 20, mode="w+", encoding="utf-8") as coords:
        for pos, place in counts.placed(positions(), "position"):
            out.write(f"<when>{utc_text(pos['fix_time'])}</when>\n")
            coords.write(f"<gx:coord>{place[0]!r} {place[1]!r} {number(pos.get('altitude_m') or 0)}</gx:coord>\n")
        coords.seek(0)
        while chunk := coords.read(1 << 16):
            out.write(chunk)
    out.write("</gx:Track></Placemark>\n</Document>\n</kml>\n")


def timeline(events: Cursor, positions: Cursor) -> Iterator[tuple[str, Doc]]:
    """Positions and events merged in time order (two sorted cursors, nothing buffered)."""
    tagged_events = (("event", ev["occurred_at"], ev) for ev in events())
    tagged_positions = (("position", pos["fix_time"], pos) for pos in positions())
    for kind, _, doc in heapq.merge(tagged_positions, tagged_events, key=lambda item: item[1]):
        yield kind, doc


def write_geojson(out: IO[str], imei: str, events: Cursor, positions: Cursor, counts: Counts) -> None:
    out.write('{"type": "FeatureCollection", "name": ' + json.dumps(imei) + ', "features": [\n')
    first = True
    for kind, doc in timeline(events, positions):
        drawn = next(counts.placed((doc,), kind), None)
        if drawn is None:
            continue
        place = drawn[1]
        coordinates: list[float] = [place[0], place[1]]
        if kind == "position":
            if doc.get("altitude_m") is not None:
                coordinates.append(float(doc["altitude_m"]))
            properties = {"kind": kind, "time": utc_text(doc["fix_time"]), "speed_kmh": doc.get("speed_kmh"),
                          "azimuth": doc.get("azimuth"), "valid": doc.get("valid"), "report": doc.get("report"),
                          "buffered": doc.get("buffered")}
        else:
            properties = {"kind": kind, "time": utc_text(doc["occurred_at"]), "event": doc.get("type"),
                          "report": doc.get("report"), "buffered": doc.get("buffered")}
        feature = {"type": "Feature", "geometry": {"type": "Point", "coordinates": coordinates},
                   "properties": properties}
        out.write(("" if first else ",\n") + json.dumps(feature, separators=(",", ":")))
        first = False
    out.write("\n]}\n")


CSV_COLUMNS = ("time", "kind", "event", "latitude", "longitude", "altitude_m", "speed_kmh", "azimuth", "valid",
               "report", "buffered", "received_at")


def write_csv(out: IO[str], imei: str, events: Cursor, positions: Cursor, counts: Counts) -> None:
    """Every position and event, with or without coordinates (empty cells then)."""
    rows = csv.writer(out, lineterminator="\n")
    rows.writerow(CSV_COLUMNS)
    for kind, doc in timeline(events, positions):
        place = lon_lat(doc)
        if kind == "position":
            counts.positions += 1
        else:
            counts.events += 1
        at = doc["fix_time"] if kind == "position" else doc["occurred_at"]
        received = doc.get("received_at")
        rows.writerow([utc_text(at), kind, doc.get("type") if kind == "event" else "",
                       place[1] if place else "", place[0] if place else "", _cell(doc.get("altitude_m")),
                       _cell(doc.get("speed_kmh")), _cell(doc.get("azimuth")), _cell(doc.get("valid")),
                       doc.get("report") or "", _cell(doc.get("buffered")),
                       utc_text(received) if isinstance(received, datetime) else ""])


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


FORMATS: dict[str, Callable[[IO[str], str, Cursor, Cursor, Counts], None]] = {
    "gpx": write_gpx, "kml": write_kml, "geojson": write_geojson, "csv": write_csv}


# --- the verb ---

def when(raw: str) -> datetime:
    """`2026-12-01`, `2026-12-01T08:30`, `2026-12-01 08:30:00Z`, `...+02:00` (UTC when no zone is given),
    or an age back from now: `90m`, `12h`, `7d`."""
    text = raw.strip()
    if text[-1:] in "smhd" and text[:-1].replace(".", "", 1).isdigit():
        seconds = float(text[:-1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[text[-1]]
        return datetime.now(timezone.utc) - timedelta(seconds=seconds)
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a date and time like 2026-12-01T08:30Z, "
                                         f"or an age like 7d") from None
    return at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)


def in_order(docs: Iterable[Doc], key: str) -> Iterator[Doc]:
    """`docs` come sorted by `key` (the index's order); those with the same time (two reports in one
    second, the points of one report) are put in the order the tracker sent them: send time, count,
    index. Only one such run is held at a time."""
    run: list[Doc] = []
    for doc in docs:
        if run and doc[key] != run[0][key]:
            yield from sorted(run, key=_sent_order)
            run = []
        run.append(doc)
    yield from sorted(run, key=_sent_order)


def _sent_order(doc: Doc) -> tuple[Any, ...]:
    sent = doc.get("sent_at")
    return (sent is None, sent or datetime.min.replace(tzinfo=timezone.utc), str(doc.get("count") or ""),
            doc.get("index") or 0)


def cursors(db: Database[Doc], imei: str, start: datetime, end: datetime,
            before: datetime) -> tuple[Cursor, Cursor]:
    def read(name: str, key: str, fields: dict[str, int]) -> Iterator[Doc]:
        # no_cursor_timeout: a month of points read by a slow consumer may take longer than the
        # server's 10 idle minutes; closed here when the file is written or the export stops.
        cursor = db[name].find({"imei": imei, key: {"$gte": start, "$lt": end}, "received_at": {"$lte": before}},
                               fields, batch_size=BATCH, no_cursor_timeout=True).sort(key, ASCENDING)
        try:
            yield from in_order(cursor, key)
        finally:
            cursor.close()

    def positions() -> Iterator[Doc]:
        return read(POSITIONS, "fix_time", POSITION_FIELDS)

    def events() -> Iterator[Doc]:
        return read(EVENTS, "occurred_at", EVENT_FIELDS)
    return events, positions


def cmd_export(args: argparse.Namespace) -> int:
    imei = check_imei(args.imei)
    start, end = args.start, args.end or datetime.now(timezone.utc)
    if start >= end:
        fail(USAGE, f"--from ({start:%Y-%m-%d %H:%M:%SZ}) must be before --to ({end:%Y-%m-%d %H:%M:%SZ})")
    db = connect(args)
    if not known_imei(db, imei) and db[POSITIONS].find_one({"imei": imei}, {"_id": 1}) is None:
        fail(NOT_FOUND, f"unknown IMEI {imei}")
    events, positions = cursors(db, imei, start, end, datetime.now(timezone.utc))
    counts = Counts()
    write = FORMATS[args.format]
    if args.output in (None, "-"):
        write(sys.stdout, imei, events, positions, counts)
        sys.stdout.flush()
    else:
        partial = f"{args.output}.part"  # a file that is there is a whole file
        try:
            with open(partial, "w", encoding="utf-8", newline="") as out:
                write(out, imei, events, positions, counts)
            os.replace(partial, args.output)
        finally:
            if os.path.exists(partial):
                os.remove(partial)
    left_out = f"; {counts.unplaced} without coordinates left out" if counts.unplaced else ""
    note(f"{imei}: {counts.positions} positions and {counts.events} events from {start:%Y-%m-%d %H:%M:%SZ} "
         f"to {end:%Y-%m-%d %H:%M:%SZ}{left_out}" + (f", written to {args.output}" if args.output else ""))
    return OK if counts.positions or counts.events else NEGATIVE


def register(add: AddVerb) -> None:
    p = add("export", "one vehicle's positions and events as GPX, KML, GeoJSON or CSV, in time order")
    p.add_argument("imei", help=IMEI_HELP)
    p.add_argument("--from", dest="start", type=when, required=True, metavar="TIME",
                   help="first fix time, UTC unless a zone is given: 2026-12-01, 2026-12-01T08:30, or an age: 7d "
                        "(required, no default)")
    p.add_argument("--to", dest="end", type=when, default=None, metavar="TIME",
                   help="fix times before this (default: now)")
    p.add_argument("--format", choices=sorted(FORMATS), default="gpx", help="file type (default: %(default)s)")
    p.add_argument("--output", metavar="FILE", help="write to FILE (default: standard output)")
    p.set_defaults(func=cmd_export)


