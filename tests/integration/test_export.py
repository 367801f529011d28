"""`gv50ctl export`: a vehicle's track from real ingested frames (live, +BUFF, resent), written as
GPX (validated against the GPX 1.1 schema, read back by gpxpy), KML (read back by fastkml),
GeoJSON (read back by geojson) and CSV: in fix-time order, no point twice, UTC times; and written
as a stream, not loaded into memory."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import tracemalloc
from datetime import datetime, timedelta, timezone
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import geojson
import gpxpy
import pytest
from fastkml import kml
from lxml import etree

from gv50_gevent.cli import main
from gv50_gevent.cli.export import Counts, cursors, write_kml
from tests.support import REPO, GatewayProcess, free_port, wait_for

IMEI = "865083030007701"
T0 = datetime(2026, 11, 3, 8, 0, 0, tzinfo=timezone.utc)
LINE = ("+{head}:GTFRI,090302,{imei},,13337,10,1,1,{speed},272,30.8,{lon:.6f},{lat:.6f},{fix:%Y%m%d%H%M%S},"
        "0460,0001,5504,29CF,00,347.8,00021:54:10,,,,220101,23,0,15,{sent:%Y%m%d%H%M%S},{count:04X}")
IGNITION = ("+RESP:{report},090302,{imei},,1377,0,0.0,24,63.3,117.201525,31.833040,{at:%Y%m%d%H%M%S},"
            "0460,0001,5504,582B,00,,0.1,{at:%Y%m%d%H%M%S},{count:04X}")
XSD = REPO / "tests" / "data" / "gpx-1.1.xsd"
LONG = os.environ.get("GV50_LONG_TESTS") == "1"


def fri(k: int, head: str = "RESP", fix_s: int | None = None, sent_s: int | None = None) -> str:
    fix = T0 + timedelta(seconds=10 * k if fix_s is None else fix_s)
    sent = fix + timedelta(seconds=1) if sent_s is None else T0 + timedelta(seconds=sent_s)
    return LINE.format(head=head, imei=IMEI, speed=10 + k, lon=117.2 + k / 1000, lat=31.85 + k / 1000, fix=fix,
                       sent=sent, count=0x100 + k)


@pytest.fixture(scope="module")
def track(mongo_uri: str, mongo: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Ten points 10 s apart: 5-9 live first, then 0-4 as +BUFF (older, sent later), one live point
    resent and one +BUFF of a point already sent live; ignition on at 25 s, off at 75 s; two points
    with one fix time at 95 s."""
    db_name = "gv50_test_export"
    mongo.drop_database(db_name)
    gw = GatewayProcess({"MONGODB_URI": mongo_uri, "MONGODB_DB": db_name, "GATEWAY_HOST": "127.0.0.1",
                         "GATEWAY_PORT": str(free_port()), "SACK_MODE": "all", "WRITE_INTERVAL_MS": "10",
                         "SHUTDOWN_GRACE_S": "3"}, mongo[db_name])
    gw.start()
    try:
        lines = [fri(k) for k in range(5, 10)] + [fri(k, "BUFF") for k in range(5)]
        lines += [fri(7), fri(8, "BUFF")]  # both already stored: no second point
        # Two reports with the same fix time (95 s): in the file in the order the tracker sent them,
        # whatever order the index gives equal times in.
        lines += [fri(20, fix_s=95, sent_s=97), fri(21, fix_s=95, sent_s=98)]
        lines.insert(3, IGNITION.format(report="GTIGN", imei=IMEI, at=T0 + timedelta(seconds=25), count=0x200))
        lines.append(IGNITION.format(report="GTIGF", imei=IMEI, at=T0 + timedelta(seconds=75), count=0x201))
        with gw.connect() as device:
            for line in lines:
                device.send_line(line)
                device.read_until(b"$", timeout=5)
                device.received = b""
        db = mongo[db_name]
        wait_for(lambda: db.positions.count_documents({"imei": IMEI}) == 14 and db.events.count_documents(
            {"imei": IMEI}) == 2, what="14 positions (two ignition reports carry one each) and two events")
    finally:
        gw.stop()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MONGODB_", "MONGOD_"))}
    env.update(MONGODB_URI=mongo_uri, MONGODB_DB=db_name)
    return {"env": env, "dir": tmp_path_factory.mktemp("export"), "db": mongo[db_name], "uri": mongo_uri,
            "db_name": db_name}


def export(track: dict[str, Any], fmt: str, *extra: str) -> tuple[Path, str]:
    out = track["dir"] / f"track.{fmt}"
    done = subprocess.run([sys.executable, "-m", "gv50_gevent.cli", "export", IMEI, "--from", "2026-11-03",
                           "--to", "2026-11-04T00:00Z", "--format", fmt, "--output", str(out), *extra], cwd=REPO,
                          env=track["env"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return out, done.stderr


def expected_times() -> list[datetime]:
    # The ten FRI points, the two ignition reports' own positions (at 25 s and 75 s), two at 95 s.
    return sorted([T0 + timedelta(seconds=10 * k) for k in range(10)] + [T0 + timedelta(seconds=s)
                                                                         for s in (25, 75, 95, 95)])


def test_gpx_validates_and_reads_back_in_order(track: dict[str, Any]) -> None:
    path, said = export(track, "gpx")
    assert "14 positions and 2 events" in said
    schema = etree.XMLSchema(etree.parse(str(XSD)))
    document = etree.parse(str(path))
    assert schema.validate(document), schema.error_log
    with open(path) as f:
        gpx = gpxpy.parse(f)
    points = [p for t in gpx.tracks for s in t.segments for p in s.points]
    assert [p.time for p in points] == expected_times()  # fix-time order, +BUFF in its place, none twice
    assert all(p.time.utcoffset() == timedelta(0) for p in points)
    assert (points[0].latitude, points[0].longitude) == (31.85, 117.2)
    assert [p.latitude for p in points[-2:]] == [31.87, 31.871]  # same fix time: sent at 97 s, then at 98 s
    assert [(w.name, w.time) for w in gpx.waypoints] == [
        ("ignition on", T0 + timedelta(seconds=25)), ("ignition off", T0 + timedelta(seconds=75))]
    assert "<time>2026-11-03T08:00:00Z</time>" in path.read_text()


def test_kml_geojson_and_csv_read_back(track: dict[str, Any]) -> None:
    path, _ = export(track, "kml")
    doc = kml.KML.parse(str(path))
    folder, placemark = doc.features[0].features
    assert [p.name for p in folder.features] == ["ignition on", "ignition off"]
    tree = etree.parse(str(path))
    ns = {"k": "http://www.opengis.net/kml/2.2", "gx": "http://www.google.com/kml/ext/2.2"}
    whens = [datetime.fromisoformat(w.replace("Z", "+00:00")) for w in tree.xpath("//gx:Track/k:when/text()",
                                                                                  namespaces=ns)]
    assert whens == expected_times() and len(tree.xpath("//gx:Track/gx:coord", namespaces=ns)) == 14
    assert placemark.name == f"{IMEI} track"

    path, _ = export(track, "geojson")
    collection = geojson.loads(path.read_text())
    assert collection.is_valid and collection["type"] == "FeatureCollection"
    times = [f["properties"]["time"] for f in collection["features"]]
    assert times == sorted(times) and all(t.endswith("Z") for t in times)
    kinds = [f["properties"]["kind"] for f in collection["features"]]
    assert kinds.count("position") == 14 and kinds.count("event") == 2
    assert collection["features"][0]["geometry"]["coordinates"][:2] == [117.2, 31.85]  # GeoJSON: lon, lat

    path, _ = export(track, "csv")
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    positions = [r for r in rows if r["kind"] == "position"]
    assert [datetime.fromisoformat(r["time"].replace("Z", "+00:00")) for r in positions] == expected_times()
    assert len({(r["time"], r["latitude"]) for r in positions}) == 14
    assert [r["event"] for r in rows if r["kind"] == "event"] == ["ignition_on", "ignition_off"]
    assert [r["time"] for r in rows] == sorted(r["time"] for r in rows)


def test_kml_track_lists_agree_when_a_point_is_stored_meanwhile(track: dict[str, Any]) -> None:
    """A point received before the export started but stored while it runs (the writer's batch was
    in flight) is in the track's <when>s and <gx:coord>s alike, or in neither."""
    imei, db = "865083030007703", track["db"]
    start = datetime(2026, 9, 1, tzinfo=timezone.utc)

    def point(k: int) -> dict[str, Any]:
        at = start + timedelta(seconds=10 * k)
        return {"_id": {"imei": imei, "report": "GTFRI", "sent_at": at, "count": f"{k:04X}", "index": 0},
                "imei": imei, "report": "GTFRI", "buffered": False, "fix_time": at, "received_at": at,
                "location": {"type": "Point", "coordinates": [13.4, 52.5]}, "valid": True}

    db.positions.insert_many([point(k) for k in range(3)])
    events, positions = cursors(db, imei, start, start + timedelta(days=1), datetime.now(timezone.utc))
    reads = 0

    def late_positions() -> Iterator[dict[str, Any]]:
        nonlocal reads
        reads += 1
        for n, doc in enumerate(positions()):
            if reads == 1 and n == 2:
                db.positions.insert_one(point(3))  # stored while the first read goes on
            yield doc

    out = io.StringIO()
    write_kml(out, imei, events, late_positions, Counts())
    tree = etree.fromstring(out.getvalue().encode())
    ns = {"k": "http://www.opengis.net/kml/2.2", "gx": "http://www.google.com/kml/ext/2.2"}
    whens, coords = tree.xpath("//gx:Track/k:when", namespaces=ns), tree.xpath("//gx:Track/gx:coord", namespaces=ns)
    assert len(whens) == len(coords) >= 3, (len(whens), len(coords))


def test_the_period_is_respected_and_an_empty_one_says_so(track: dict[str, Any]) -> None:
    done = subprocess.run([sys.executable, "-m", "gv50_gevent.cli", "export", IMEI, "--from", "2026-11-03T08:00:30Z",
                           "--to", "2026-11-03T08:01:00Z", "--format", "csv"], cwd=REPO, env=track["env"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    times = [r["time"] for r in csv.DictReader(io.StringIO(done.stdout))]
    assert times == ["2026-11-03T08:00:30Z", "2026-11-03T08:00:40Z", "2026-11-03T08:00:50Z"]
    done = subprocess.run([sys.executable, "-m", "gv50_gevent.cli", "export", IMEI, "--from", "2020-01-01",
                           "--to", "2020-01-02"], cwd=REPO, env=track["env"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1 and "0 positions and 0 events" in done.stderr
    assert etree.XMLSchema(etree.parse(str(XSD))).validate(etree.fromstring(done.stdout.encode()).getroottree())


def test_a_long_track_is_streamed_not_loaded(track: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    # 10,000 documents, 400 bytes of padding each: about 10 MB as dicts at once, while the stream
    # holds one batch. The long run proves the same with three times as many.
    imei, n = "865083030007702", 30_000 if LONG else 10_000
    db = track["db"]
    start = datetime(2026, 10, 1, tzinfo=timezone.utc)
    db.vehicles.insert_one({"_id": imei, "enabled": True})
    for chunk in range(0, n, 5000):
        db.positions.insert_many([{
            "_id": {"imei": imei, "report": "GTFRI", "sent_at": start + timedelta(seconds=10 * k), "count": "0001",
                    "index": 0},
            "imei": imei, "report": "GTFRI", "buffered": False, "fix_time": start + timedelta(seconds=10 * k),
            "received_at": start + timedelta(seconds=10 * k + 1), "location": {"type": "Point",
                                                                               "coordinates": [13.4, 52.5]},
            "altitude_m": 34.0, "speed_kmh": 50.0, "azimuth": 90, "valid": True, "padding": "x" * 400}
            for k in range(chunk, chunk + 5000)])
    out = track["dir"] / "long.gpx"
    tracemalloc.start()
    try:
        code = main(["--uri", track["uri"], "--db", track["db_name"], "export", imei, "--from", "2026-10-01",
                     "--to", "2026-11-01", "--output", str(out)])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code == 0, capsys.readouterr().err
    assert out.read_text().count("<trkpt ") == n
    # The same documents loaded at once, for comparison: the stream must hold far less.
    tracemalloc.start()
    try:
        every = list(db.positions.find({"imei": imei}))
        _, loaded = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(every) == n
    assert peak < 8_000_000 and peak < loaded / 4, f"peak {peak / 1e6:.1f} MB, all at once {loaded / 1e6:.1f} MB"
