"""A simulated tracker in HEX mode (`<Protocol Format>` 1): the ASCII line it would send, as the HEX
frame with the same values (spec 1.7), for the messages a fleet sends all day: GTFRI (and its
`+BUFF` replay, `+BSP`), GTIGN / GTIGF (`+EVT`, `+BVT`) and the heartbeat (`+HBD`). Everything
else (command ACKs, answers to queries) stays ASCII, which the gateway takes on the same
connection. The masks are the tracker's AT+GTHRM choice; any mask works, a field the mask leaves
out is simply not sent.
"""

from __future__ import annotations

from typing import Any

from ..protocol import encode_hex, parse
from ..protocol.hex import DEFAULT_MASKS
from ..protocol.messages import Message

FIRMWARE = "020E"  # what the simulated GV50 says it runs (GTVER: 2.14)
# Masks that carry what the simulator's ASCII lines carry: the default +RSP mask and CSQ (bit 26);
# for +EVT the header, position, mileage and send time, as the ASCII event lines have them.
FULL_MASKS = {"RSP": DEFAULT_MASKS["RSP"] | (1 << 26),
              "EVT": sum(1 << b for b in (0, 1, 2, 3, 4, 5, 7, 8, 9, 21)), "HBD": DEFAULT_MASKS["HBD"]}
_HEADERS = {("+RESP", "RSP"): "+RSP", ("+BUFF", "RSP"): "+BSP", ("+RESP", "EVT"): "+EVT", ("+BUFF", "EVT"): "+BVT"}
_FAMILY = {"GTFRI": "RSP", "GTIGN": "EVT", "GTIGF": "EVT"}


def _head(message: Message) -> dict[str, Any]:
    version = message.protocol_version or "090302"
    return {"device_type": int(version[:2], 16), "protocol": version[2:], "firmware": FIRMWARE,
            "imei": message.imei, "sent_at": message.sent_at, "count": message.count}  # type: ignore[attr-defined]


def _position(p: Any) -> dict[str, Any]:
    return {"number": 1, "gps_accuracy": p.gps_accuracy, "speed_kmh": p.speed_kmh, "azimuth": p.azimuth,
            "altitude_m": round(p.altitude_m or 0), "longitude": p.longitude, "latitude": p.latitude,
            "fix_time": p.fix_time, "mcc": p.mcc, "mnc": p.mnc, "lac": p.lac, "cell_id": p.cell_id}


def hex_frame(line: str, masks: dict[str, int] | None = None) -> bytes | None:
    """The HEX twin of an ASCII device line, or None for a message the simulator keeps in ASCII."""
    masks = masks or FULL_MASKS
    body = line[:-1] if line.endswith("$") else line
    header, _, rest = body.partition(":")
    type_ = rest.partition(",")[0]
    if header == "+ACK" and type_ == "GTHBD":
        return encode_hex("+HBD", None, _head(parse(body)), masks["HBD"])
    family = _FAMILY.get(type_)
    if family is None or (header, family) not in _HEADERS:
        return None
    m: Any = parse(body)
    values = {**_head(m), **_position(m.positions[0]), "mileage_km": m.mileage_km or 0.0,
              "hour_meter_s": m.hour_meter_s or 0}
    if type_ == "GTFRI":
        status = m.status
        values.update(external_power_mv=m.external_power_mv or 0, report_id_type=int(m.report_id_type or "10", 16),
                      inputs=status.inputs, outputs=status.outputs, motion=status.motion_state,
                      satellites=m.satellites or 0, csq_rssi=m.csq_rssi or 0, csq_ber=m.csq_ber or 0,
                      battery_percent=m.battery_percent or 0, trip_km=0.0, trip_hour_meter_s=0)
    else:
        values.update(duration_s=m.duration_s or 0)
    return encode_hex(_HEADERS[(header, family)], type_, values, masks[family])
