"""The HEX message types (V4.01 chapter 4): each frame's layout (the fields after its mask, in wire
order, `hex_layout.py` codecs) and, per message type, its ASCII twin and how the twin's model
fields are built from the wire values. One table per HEX header (`RSP_TYPES`, `EVT_TYPES`,
`INF_TYPES`, `ACK_TYPES`), keyed by the frame's message type byte; `hex.py` reads and writes
frames by them.

A `Build` is an expression over wire values (`$name`), compiled into the frame's reader, so a
HEX report becomes the dict its model validates in one generated function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from .hex_layout import (
    CELLS, DEGREES, HEX2, HHMM, HMS3, HMS6, ICCID, KM3, KM5, METRES, PHONE, SPEED, SVS, TIME, U8, U16, U32, Codec, F,
    Field, group, pad, uid,
)
from .reports import REPORTS
from .reports_events import FirmwareUpdate

SATS: Final = Codec("B", "{0} & 15", lambda v: (int(v),))  # the count is the low nibble (p. 147)
MOTION: Final = Codec("B", "'%02X' % {0}", lambda v: (int(v, 16),))  # `22`, as ASCII writes it

# -- layouts: the fields after the mask, in wire order -------------------------------------------


def report_fields(extra: tuple[Field, ...], csq: bool) -> tuple[Field, ...]:
    """+RSP / +EVT (p. 144-172). `extra` sits between the satellites and the number. The +EVT
    mask calls bit 11 reserved and its tables leave the battery out, yet every +EVT example sets
    bit 11 and carries the byte: the examples are followed (spec 1.7 [DOC-ERR])."""
    return (
        F("length", U16, 7), F("device_type", U8, 8), F("protocol", HEX2, 9), F("firmware", HEX2, 10),
        uid(6),
        F("battery_percent", U8, 11), F("external_power_mv", U16, 12),
        F("inputs", U8, 17), F("outputs", U8, 17), F("motion", MOTION, 18), F("satellites", SATS, 19),
        *extra,
        F("number", U8), F("gps_accuracy", U8), F("speed_kmh", SPEED, 0), F("azimuth", U16, 1),
        F("altitude_m", METRES, 2), F("longitude", DEGREES), F("latitude", DEGREES), F("fix_time", TIME),
        F("mcc", HEX2, 3), F("mnc", HEX2, 3), F("lac", HEX2, 3), F("cell_id", HEX2, 3), F(None, pad(1), 3),
        F("trip_km", KM3, 20), F("mileage_km", KM5, 21),
        F("trip_hour_meter_s", HMS3, 22), F("hour_meter_s", HMS6, 23),
        *((F("csq_rssi", U8, 26), F("csq_ber", U8, 26)) if csq else ()),
        F("sent_at", TIME, 4), F("count", HEX2, 5),
    )


# +INF (p. 152-154). The groups of bits 8-15 (and expansion bits 0, 4, 5) follow the colours of
# the V4.01 table. The device type / protocol / firmware rows are coloured into the VER group but
# are also the mask's bits 2-4: they are read by those bits. The reserved byte between the VER and
# IOS groups has no group of its own in the table; it is read with IOS [INF]. The IGN and IGF
# intervals are 2 bytes each, not 4: only then does the 216-byte example decode (spec 1.7 [DOC-ERR]).
INF_LAYOUT: Final = (
    F("length", U16, 0), uid(1), F("device_type", U8, 2), F("protocol", HEX2, 3), F("firmware", HEX2, 4),
    *group(8, F("hardware_version", HEX2), F(None, pad(4))),
    *group(9, F(None, pad(12)), F("inputs", U8), F("outputs", U8), F(None, pad(1))),
    *group(10, F("motion", MOTION), F(None, pad(1)), F("satellites", SATS), F("power_saving", U8),
           F("last_fix_time", TIME), F(None, pad(1)), F("fri_discard_no_fix", U8), F("report_mask", HEX2),
           F("ign_interval_s", U16), F("igf_interval_s", U16), F(None, pad(5))),
    *group(11, F("led", U8), F("external_power_mv", U16), F("backup_battery_mv", U16), F(None, pad(1))),
    *group(12, F("iccid", ICCID)),
    *group(13, F("csq_rssi", U8), F("csq_ber", U8)),
    *group(14, F("tz_flags", U8), F("tz_offset", HHMM)),
    *group(15, F("gir_trigger", U8), F("cells", CELLS)),
    *group(16, F("gsv", SVS)), *group(20, F("rsv", SVS)), *group(21, F("bsv", SVS)),
    F("sent_at", TIME, 5), F("count", HEX2, 6),
)
ACK_LAYOUT: Final = (
    F("length", U8, 0), F("device_type", U8, 1), F("protocol", HEX2, 2), F("firmware", HEX2, 3), uid(4),
    F("sub_id", U8), F("serial", HEX2), F("sent_at", TIME, 5), F("count", HEX2, 6),
)
# +HBD mask bit 7 is the unique ID itself (p. 172).
HBD_LAYOUT: Final = (
    F("length", U8, 0), F("device_type", U8, 1), F("protocol", HEX2, 2), F("firmware", HEX2, 3), uid(4, 7),
    F("sent_at", TIME, 5), F("count", HEX2, 6),
)

# -- from wire values to the ASCII twin's model fields ----------------------------------------------


class Build(NamedTuple):
    """One model field: `template` is an expression over wire values (`$name`; a name the mask
    leaves out reads as None). When one of `needs` is left out, the field is `default` instead."""

    key: str
    template: str
    needs: tuple[str, ...] = ()
    default: str = "None"


def _copy(*names: str) -> tuple[Build, ...]:
    """Wire values that are model fields of the same name."""
    return tuple(Build(name, f"${name}") for name in names)


_POSITION: Final = (Build("positions", "({" + ", ".join(f"'{k}': ${k}" for k in (
    "gps_accuracy", "speed_kmh", "azimuth", "altitude_m", "longitude", "latitude", "fix_time",
    "mcc", "mnc", "lac", "cell_id")) + "},)"),)
# Report ID / type: high nibble ID, low nibble type (p. 147), as ASCII's two hex characters.
_NIBBLES: Final = Build("report_id_type", "'%X%X' % divmod($report_id_type, 16)", ("report_id_type",))
# GEO (p. 151): bit 0 type, bits 4-7 the low 4 bits of the fence ID, bits 1-3 its high 3 bits.
# ASCII writes the ID in hex, then the type (`131` = fence 19 entered).
_FENCE: Final = Build("report_id_type", "'%X%d' % (($report_id_type >> 1 & 7) << 4 | $report_id_type >> 4, "
                                        "$report_id_type & 1)", ("report_id_type",))
_STATUS: Final = Build("status", "'%s%02X%02X' % ($motion, $inputs, $outputs)", ("motion", "inputs"))
_STATE: Final = Build("state", "$motion")
# LED On (p. 156): bit 5 = 2, bit 4 = 1.
_LED: Final = Build("led_on", "2 if $led & 32 else 1 if $led & 16 else None", ("led",))
_BACKUP: Final = Build("backup_battery_v", "$backup_battery_mv / 1000", ("backup_battery_mv",))
# Bit 0 = negative offset, bit 1 = daylight saving (p. 156); the offset is hours, minutes [INF: binary].
_ZONE: Final = (Build("time_zone", "('-' if $tz_flags & 1 else '+') + $tz_offset", ("tz_flags",)),
                Build("daylight_saving", "bool($tz_flags & 2)", ("tz_flags",)))
# GTVER's device type is text (`GV50`); HEX has the type code, and 09 is GV50 (spec 2.2).
_VERSION: Final = (Build("device_type", "_DEVICE_TYPES.get($device_type, '%02X' % $device_type)", ("device_type",)),
                   Build("software_version", "$firmware"), Build("hardware_version", "$hardware_version"))
GIR_TRIGGERS: Final = {0: "INF", 2: "RTL", 3: "LBC", 4: "TOW", 5: "FRI", 6: "GIR"}
# The last GIR cell is the serving one, as in ASCII GTGSM (the examples' serving cell 582B is last).
_CELLS: Final = (Build("fix_type", "_GIR.get($gir_trigger)"), Build("neighbours", "_cells($cells)[:-1]"),
                 Build("serving", "(_cells($cells) or [None])[-1]"))


def _svs(name: str) -> tuple[Build, ...]:
    return (Build("sv_count", f"len(${name})"), Build("svs", f"${name}"))


def _cells(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"mcc": c["mcc"], "mnc": c["mnc"], "lac": c["lac"], "cell_id": c["cell_id"], "rx_level": c["rx_level"]}
            for c in cells]


# Every device message: who sent it, when, its count. The IMEI and protocol version fall back to
# the reader's arguments (what the connection knows) when the masks leave them out.
COMMON_BUILDS: Final = (
    Build("protocol_version", "'%02X%s' % ($device_type, $protocol)", ("device_type", "protocol"), "version_arg"),
    Build("imei", "$imei", ("imei",), "imei_arg"),
    *_copy("device_name", "sent_at", "count"),
)
BUILD_ENV: Final = {"_DEVICE_TYPES": {9: "GV50"}, "_GIR": GIR_TRIGGERS, "_cells": _cells}


@dataclass(frozen=True, slots=True)
class HexType:
    """One HEX message type: its ASCII twin, the fields it adds to its frame's layout (+RSP/+EVT:
    between the satellites and the number) and how the twin's model fields are built."""

    ascii: str
    builds: tuple[Build, ...] = ()
    extra: tuple[Field, ...] = ()
    model: Any = None  # None: REPORTS[ascii].model
    inf_group: int | None = None  # the +INF group bit this type carries (None: GTINF, by the mask)

    def model_class(self) -> Any:
        return self.model if self.model is not None else REPORTS[self.ascii].model

    def __post_init__(self) -> None:
        if self.model is None:
            object.__setattr__(self, "model", REPORTS[self.ascii].model)


_RID: Final = (F("report_id_type", U8),)
_FAMILY: Final = (*_copy("number", "mileage_km"), _NIBBLES, *_POSITION)
_IGN: Final = (F("duration_s", U32),)
_VGN: Final = (F(None, pad(2)), F("report_type", U8), F("duration_s", U32))

RSP_TYPES: Final[dict[int, HexType]] = {
    0: HexType("GTRTL", _FAMILY, _RID), 11: HexType("GTRTL", _FAMILY, _RID),  # RTL is listed twice (p. 145)
    1: HexType("GTTOW", _FAMILY, _RID),
    3: HexType("GTLBC", (*_copy("call_number"), *_POSITION), (*_RID, F("call_number", PHONE))),
    4: HexType("GTEPS", (*_copy("external_power_mv"), *_FAMILY), _RID),
    7: HexType("GTFRI", (*_copy("external_power_mv", "hour_meter_s", "battery_percent", "csq_rssi", "csq_ber",
                                "satellites"), *_FAMILY, _STATUS), _RID),
    8: HexType("GTGEO", (*_copy("number", "mileage_km"), _FENCE, *_POSITION), _RID),
    9: HexType("GTSPD", _FAMILY, _RID), 12: HexType("GTDOG", _FAMILY, _RID), 15: HexType("GTHBM", _FAMILY, _RID),
    16: HexType("GTIGL", _FAMILY, _RID), 26: HexType("GTVGL", _FAMILY, _RID),
}
_IGNITION: Final = (*_copy("duration_s", "hour_meter_s", "mileage_km"), *_POSITION)
_START_STOP: Final = (*_copy("mileage_km"), *_POSITION)
EVT_TYPES: Final[dict[int, HexType]] = {
    1: HexType("GTPNA"), 2: HexType("GTPFA"), 12: HexType("GTPDP"),  # no position in ASCII
    3: HexType("GTMPN", _POSITION), 4: HexType("GTMPF", _POSITION),
    9: HexType("GTSTT", (_STATE, *_POSITION)),
    13: HexType("GTIGN", _IGNITION, _IGN), 14: HexType("GTIGF", _IGNITION, _IGN),
    # The p. 161 VGN example is a copy of the IGN one (type 13, no VGN fields): the table is followed.
    45: HexType("GTVGN", (*_copy("report_type"), *_IGNITION), _VGN),
    46: HexType("GTVGF", (*_copy("report_type"), *_IGNITION), _VGN),
    15: HexType("GTUPD", (*_copy("code", "retry", "mileage_km"), *_POSITION), (F("code", U16), F("retry", U8)),
                model=FirmwareUpdate),
    16: HexType("GTIDN", _START_STOP), 28: HexType("GTSTR", _START_STOP),
    29: HexType("GTSTP", _START_STOP), 30: HexType("GTLSP", _START_STOP),
    17: HexType("GTIDF", (_STATE, *_copy("duration_s", "mileage_km"), *_POSITION), (F("duration_s", U32),)),
    # The table puts 4 more reserved bytes after the total hour meter; the p. 166 example has none.
    21: HexType("GTGSS", (*_copy("gps_signal", "satellites"), _STATE, *_POSITION),
                (F("gps_signal", U8), F(None, pad(4)))),
    25: HexType("GTDOS", (*_copy("output_id", "output_active"), *_POSITION),
                (F("output_id", U8), F("output_active", U8))),
    # V4.01 lists GTGES under +RSP (p. 144) but sends it as +EVT 26. Its table gives a 2-byte fence
    # ID and a 1-byte enable; the p. 169 example has one byte, high nibble ID, low nibble enable.
    26: HexType("GTGES", (*_copy("trigger_mode", "radius_m", "check_interval_s", "number", "mileage_km"),
                          _NIBBLES, *_POSITION),
                (*_RID, F("trigger_mode", U8), F("radius_m", U32), F("check_interval_s", U32))),
    32: HexType("GTRMD", (*_copy("roaming_state"), *_POSITION), (F("roaming_state", U8),)),
}
INF_TYPES: Final[dict[int, HexType]] = {
    1: HexType("GTINF", (_STATE, *_copy("iccid", "csq_rssi", "csq_ber", "external_power_mv", "last_fix_time",
                                        "inputs", "outputs"), _LED, _BACKUP, *_ZONE)),
    2: HexType("GTGPS", _copy("report_mask", "last_fix_time"), inf_group=10),
    4: HexType("GTCID", _copy("iccid"), inf_group=12),
    5: HexType("GTCSQ", _copy("csq_rssi", "csq_ber"), inf_group=13),
    6: HexType("GTVER", _VERSION, inf_group=8),
    7: HexType("GTBAT", (*_copy("external_power_mv"), _LED, _BACKUP), inf_group=11),
    8: HexType("GTIOS", _copy("inputs", "outputs"), inf_group=9),
    9: HexType("GTTMZ", _ZONE, inf_group=14),
    10: HexType("GTGSM", _CELLS, inf_group=15),
    11: HexType("GTGSV", _svs("gsv"), inf_group=16),
    21: HexType("GTRSV", _svs("rsv"), inf_group=20),
    22: HexType("GTBSV", _svs("bsv"), inf_group=21),
}
# +ACK message type = the command's ID (p. 141-143). UPD and SPA are not documented as commands.
ACK_TYPES: Final[dict[int, str]] = {
    0: "GTBSI", 1: "GTSRI", 2: "GTQSS", 4: "GTCFG", 5: "GTTOW", 6: "GTEPS", 7: "GTDIS", 8: "GTOUT", 10: "GTTMA",
    11: "GTFRI", 12: "GTGEO", 13: "GTSPD", 16: "GTRTO", 21: "GTUPD", 22: "GTPIN", 24: "GTOWH", 25: "GTDOG",
    28: "GTIDL", 29: "GTHBM", 30: "GTHMC", 34: "GTWLT", 35: "GTHRM", 38: "GTPDS", 40: "GTSPA", 41: "GTSSR",
    44: "GTRMD", 45: "GTFFC", 46: "GTCMD", 47: "GTUDF", 48: "GTGAM", 49: "GTVVS", 50: "GTAVS",
}
# The ID byte of an RTO ACK is the sub-command; ASCII echoes its name (spec 3.24). A GEO ACK's is
# the fence ID, which ASCII writes in decimal (`0`). Other commands have no such field in ASCII.
RTO_NAMES: Final = {0: "GPS", 1: "RTL", 2: "READ", 3: "REBOOT", 4: "RESET", 6: "CID", 7: "CSQ", 8: "VER",
                    9: "BAT", 10: "IOS", 11: "TMZ", 12: "GIR", 13: "DELBUF", 14: "GSV"}
_ACK_SUB: Final = {"GTRTO": "_RTO.get($sub_id, '%X' % $sub_id)", "GTGEO": "str($sub_id)"}


def ack_builds(command: str) -> tuple[Build, ...]:
    return (*_copy("serial"), Build("sub", _ACK_SUB.get(command, "None")))
