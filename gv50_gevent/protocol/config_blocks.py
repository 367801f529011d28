"""The @Track configuration blocks by name: one table of each command's slots (between password and
serial, in wire order), used both for what an acknowledged command set and for the tracker's own
settings dumps (GTALM / GTALC / GTALS, spec 4.3.2-4.3.4), which list the same slots after a
three-letter tag.

Slot names are the command encoders' parameter names where an encoder exists (`commands.py`
checks this in its tests). `None` is a reserved slot; a secret slot (the device password in CFG,
the APN password in BSI, the SIM PIN) is also `None`: it is never kept. Values are converted to
the encoders' types (int, bool for 0/1 flags, str); a value that does not convert is kept as sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

Convert = Callable[[str], Any]
Slot = tuple[str, Convert] | None


def _flag(value: str) -> bool:
    if value not in ("0", "1"):
        raise ValueError(value)
    return value == "1"


def _hex(value: str) -> str:
    int(value, 16)
    return value.upper()


def _text(value: str) -> str:
    return value


def i(name: str) -> Slot:
    return (name, int)


def f(name: str) -> Slot:
    return (name, float)


def b(name: str) -> Slot:
    return (name, _flag)


def h(name: str) -> Slot:
    return (name, _hex)


def s(name: str) -> Slot:
    return (name, _text)


def r(n: int = 1) -> tuple[Slot, ...]:
    return (None,) * n


SECRET: Final[Slot] = None


def _output(prefix: str = "output") -> tuple[Slot, ...]:
    # The GV50P wave on an event: output ID, status, duration (x100 ms), toggle times.
    return (i(f"{prefix}_id"), b(f"{prefix}_status"), i(f"{prefix}_duration"), i(f"{prefix}_toggles"))


@dataclass(frozen=True, slots=True)
class Block:
    """One command's slots. `repeat` > 1: the dump lists that many entries of the slots (GEO's 20
    fences, FFC's 5 sets, CMD's 32 stored commands, UDF's 32 groups). `slots` empty: the block is
    kept as its list of values (RMD, whose lists change its length)."""

    slots: tuple[Slot, ...]
    repeat: int = 1

    @property
    def width(self) -> int:
        return len(self.slots)


# Dump form, which is also the command form except where COMMAND_FORMS says otherwise.
BLOCKS: Final[dict[str, Block]] = {
    "BSI": Block((s("apn"), s("user"), SECRET, *r(4))),
    "SRI": Block((
        i("report_mode"), None, i("buffer_mode"), s("host"), i("port"), s("backup_host"), i("backup_port"),
        s("sms_gateway"), i("heartbeat_min"), b("sack_enable"), i("protocol_format"), b("sms_ack_enable"), None,
        b("special_sack_enable"),
    )),
    "CFG": Block((
        SECRET, s("device_name"), b("odo_enable"), f("odo_mileage_km"), *r(2), h("report_mask"), i("power_saving"),
        None, h("event_mask"), None, i("led_on"), b("info_report_enable"), i("info_report_interval_s"),
        i("location_by_call"), *r(2), b("agps_mode"), h("gsm_report"), i("gps_lost_time_min"),
    )),
    "TOW": Block((
        b("enable"), i("engine_off_to_tow_min"), i("fake_tow_delay_min"), i("tow_interval_s"), *_output(),
        i("rest_duration"), i("motion_duration"), i("motion_threshold"), *r(8),
    )),
    "EPS": Block((
        i("mode"), i("min_mv"), i("max_mv"), i("sample_period"), i("debounce_s"), *_output(), b("sync_with_fri"),
        i("margin_10mv"), i("debounce_voltage_100mv"), None,
    )),
    "DIS": Block((i("ignition_port"), i("sample_period"), None, i("detection_mode"), *r(16))),
    # The dump gives the zone as one `±HHMM` value (the command takes sign, hours, minutes, UTC time).
    "TMA": Block((s("time_zone"), b("daylight_saving"), *r(4))),
    "FRI": Block((
        i("mode"), b("discard_no_fix"), None, b("period_enable"), s("start_time"), s("end_time"), None,
        i("send_interval_s"), i("distance_m"), i("mileage_m"), None, i("corner_deg"), i("igf_interval_s"), *r(4),
    )),
    "GEO": Block((
        i("geo_id"), i("mode"), f("longitude"), f("latitude"), i("radius_m"), i("check_interval_s"), *_output(),
        i("trigger_mode"), b("trigger_report"), *r(2),
    ), repeat=20),
    "SPD": Block((
        i("mode"), i("min_kmh"), i("max_kmh"), i("validity_s"), i("send_interval_s"), *_output(), *r(11),
    )),
    "PIN": Block((b("enable"), SECRET, *r(5))),
    "OWH": Block((
        b("mode"), h("work_days"), s("start_1"), s("end_1"), s("start_2"), s("end_2"), *r(3), *_output(), *r(4),
    )),
    "DOG": Block((
        i("mode"), i("ignition_frequency_min"), i("interval_days"), s("time"), None, b("report_before_reboot"),
        *r(2), i("gsm_interval_min"), i("pdp_interval_min"), None,
    )),
    "IDL": Block((
        b("mode"), i("time_to_idling_min"), i("time_to_movement_min"), i("debounce_distance_m"), *r(3),
        *_output(), *r(4),
    )),
    "HMC": Block((b("enable"), s("initial_hour_meter"), *r(8))),
    "HBM": Block((
        i("mode"), *r(2), i("high_speed_kmh"), i("high_braking_kmh"), i("high_accel_kmh"), None,
        i("medium_speed_kmh"), i("medium_braking_kmh"), i("medium_accel_kmh"), *r(2), i("low_braking_kmh"),
        i("low_accel_kmh"), None, *_output(), *r(4),
    )),
    # The dump lists the call filter, all ten numbers and four reserved slots (no start/end index).
    "WLT": Block((i("call_filter"), *(s(f"number_{n}") for n in range(1, 11)), *r(4))),
    "HRM": Block((*r(2), h("ack_mask"), h("rsp_mask"), h("evt_mask"), h("inf_mask"), h("hbd_mask"), *r(4))),
    "PDS": Block((i("mode"), h("mask"), *r(6))),
    # The dump carries only the DOS report switch (the output level is in the device status).
    "OUT": Block((i("dos_report"), *r(6))),
    "SSR": Block((
        b("mode"), i("time_to_stop_min"), i("time_to_start_min"), i("start_speed_kmh"), i("long_stop_min"), *r(3),
    )),
    "RMD": Block(()),
    "FFC": Block((
        i("priority"), i("mode"), i("fri_mode"), *r(6), i("ign_interval_s"), i("distance_m"), i("mileage_m"),
        i("igf_interval_s"), None, i("corner_deg"), *r(4),
    ), repeat=5),
    "CMD": Block((i("mode"), i("command_id"), s("command"), *r(4)), repeat=32),
    "UDF": Block((
        i("mode"), i("group_id"), h("input_mask"), i("debounce_s"), h("inzizo_mask"), h("outzizo_mask"),
        h("stocmd_mask"), b("stocmd_ack"), *r(4),
    ), repeat=32),
    "GAM": Block((
        b("mode"), i("speed_mode"), i("motion_speed_kmh"), i("motion_time_s"), i("motionless_time_s"),
        i("fix_failure_timeout_s"), *r(4),
    )),
    "VVS": Block((i("ignition_on_mv"), i("offset_mv"), i("debounce_s"), *r(2))),
    "AVS": Block((i("rest_duration_s"), i("motion_validity_s"), *r(3))),
}

# Where the command's own slots differ from the dump's.
COMMAND_FORMS: Final[dict[str, Block]] = {
    "TMA": Block((s("sign"), i("hour_offset"), i("minute_offset"), b("daylight_saving"), None, *r(4))),
    "OUT": Block((b("output1_status"), i("duration"), i("toggle_times"), *r(3), i("dos_report"), *r(6))),
}

# GTALS / RTO name the TMA block `TMZ` (spec 7); the dump tags use both.
TAG_ALIASES: Final[dict[str, str]] = {"TMZ": "TMA"}


def block_name(tag: str) -> str:
    """The `devices.config` key of a block tag: `FRI` -> `fri`, `TMZ` -> `tma`."""
    return TAG_ALIASES.get(tag, tag).lower()


def _convert(slot: tuple[str, Convert], value: str | None) -> Any:
    if value is None:
        return None
    try:
        return slot[1](value)
    except ValueError:
        return value  # outside what the table expects: kept as sent


def _named(slots: tuple[Slot, ...], values: Iterable[str | None]) -> dict[str, Any]:
    return {slot[0]: _convert(slot, value) for slot, value in zip(slots, values) if slot is not None}


def _rejoin_commands(values: tuple[str | None, ...]) -> tuple[str | None, ...]:
    # CMD stores whole AT commands, which carry their own commas: the dump splits them apart.
    out: list[str | None] = []
    it = iter(values)
    for value in it:
        if value is not None and value.startswith("AT+"):
            while not value.endswith("$"):
                nxt = next(it, None)
                if nxt is None:
                    break
                value = f"{value},{nxt or ''}"
        out.append(value)
    return tuple(out)


def read_block(tag: str, values: tuple[str | None, ...]) -> dict[str, Any] | None:
    """A dump block's values by name, or None for a tag this table does not know. Repeated blocks
    give `entries` (a list of named entries); RMD gives `values`. A block of the wrong length is
    read as far as it goes, and `length` says what was sent."""
    name = TAG_ALIASES.get(tag, tag)
    block = BLOCKS.get(name)
    if block is None:
        return None
    if not block.slots:
        return {"values": list(values)}
    if name == "CMD":
        values = _rejoin_commands(values)
    if block.repeat == 1:
        named = _named(block.slots, values)
    else:
        w = block.width
        named = {"entries": [_named(block.slots, values[k:k + w]) for k in range(0, len(values) - w + 1, w)]}
    if len(values) != block.width * block.repeat:
        named["length"] = len(values)
    return named


def command_fields(tag: str, slots: tuple[str | None, ...]) -> dict[str, Any]:
    """What a command line with these slots (between password and serial) sets, by name: only the
    slots it fills (V4.01 does not say whether an empty slot keeps or clears a setting)."""
    block = COMMAND_FORMS.get(tag) or BLOCKS.get(tag)
    if block is None or not block.slots or block.repeat != 1:
        return {}
    return {slot[0]: _convert(slot, value) for slot, value in zip(block.slots, slots)
            if slot is not None and value not in (None, "")}


def command_slot_names(tag: str) -> tuple[str | None, ...]:
    """The names of a command's slots in wire order (None: reserved or secret)."""
    block = COMMAND_FORMS.get(tag) or BLOCKS[tag]
    return tuple(slot[0] if slot is not None else None for slot in block.slots)
