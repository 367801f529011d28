"""Telemetry: which parameters a report carries, as `{param: (value, at)}`, for `devices.telemetry`.

`at` is the time the tracker measured the value: the fix time for what comes from a GPS fix (GPS
accuracy, speed), the report's send time for everything else. A report without a send time gives
no telemetry: the gateway's clock cannot stand in for the tracker's (its send times are in its own
time zone, AT+GTTMA).

This runs for every report, so nothing here dumps a model: what to read is worked out once per
report class (`_plan`) from the class's own fields and properties, and then read with plain
attribute access.

Parameters (the names under `devices.telemetry`):
- power: `battery_percent`, `battery_v` (backup battery), `external_power_mv`, `main_power`
  (GTMPN/GTMPF, input bit 7), `powered` (GTPNA/GTPFA);
- motion and ignition: `motion` (the motion state by name, e.g. `ignition_on_moving`), `moving`,
  `ignition`, `idling` (GTIDN/GTIDF); `ignition`, `motion` and `main_power` also get `since`,
  when the value last changed;
- radio: `gsm_rssi`, `gsm_ber`, `cell` (`mcc`, `mnc`, `lac`, `cell_id`, with `rx_level` from
  GTGSM), `roaming`, `iccid`;
- GPS: `satellites`, `gps_accuracy`, `speed_kmh`, `gps_signal` (GTGSS), `last_fix_at`;
- counters: `mileage_km`, `hour_meter_s`;
- I/O: `inputs`, `outputs` (the `II` / `OO` bytes), `output1`, `output2` (GTDOS);
- clock: `time_zone`.
V4.01 reports carry no charging state.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

from ..protocol import Report
from ..protocol.messages import MOTION_STATES, moving_from_motion
from ..protocol.reports_base import MotionStateReport

Telemetry = dict[str, tuple[Any, datetime]]

# Parameters whose `since` (when the value last changed) is kept: an operator asks "since when".
SINCE: Final[frozenset[str]] = frozenset({"ignition", "motion", "main_power"})

# Report fields read as they are: field name -> parameter.
FIELD_PARAMS: Final[dict[str, str]] = {
    "battery_percent": "battery_percent",
    "backup_battery_v": "battery_v",
    "external_power_mv": "external_power_mv",
    "mileage_km": "mileage_km",
    "hour_meter_s": "hour_meter_s",
    "csq_rssi": "gsm_rssi",
    "csq_ber": "gsm_ber",
    "satellites": "satellites",
    "iccid": "iccid",
    "inputs": "inputs",
    "outputs": "outputs",
    "gps_signal": "gps_signal",
    "time_zone": "time_zone",
    "last_fix_time": "last_fix_at",
}

# What an event report says by being sent.
EVENT_PARAMS: Final[dict[str, dict[str, Any]]] = {
    "GTMPN": {"main_power": True},
    "GTMPF": {"main_power": False},
    "GTPNA": {"powered": True},
    "GTPFA": {"powered": False},
    "GTIDN": {"idling": True},
    "GTIDF": {"idling": False},
}

Step = Callable[[Any, datetime, Telemetry], None]


def _status(report: Any, at: datetime, out: Telemetry) -> None:
    """`SSIIOO` of GTFRI (spec 2.4)."""
    status = report.status
    if status is None:
        return
    code = status.motion_state
    out["motion"] = (MOTION_STATES.get(code, code), at)
    moving = moving_from_motion(code)
    if moving is not None:
        out["moving"] = (moving, at)
    inputs = status.inputs
    out["inputs"] = (inputs, at)
    out["outputs"] = (status.outputs, at)
    out["main_power"] = (bool(inputs & 0x80), at)
    out["output1"] = (bool(status.outputs & 0x01), at)


def _motion(report: Any, at: datetime, out: Telemetry) -> None:
    """The `state` field of GTSTT, GTINF, GTIDF, GTGSS (spec 2.5)."""
    code = report.state
    out["motion"] = (MOTION_STATES.get(code, code), at)
    moving = moving_from_motion(code)
    if moving is not None:
        out["moving"] = (moving, at)


def _ignition(report: Any, at: datetime, out: Telemetry) -> None:
    ignition = report.ignition
    if ignition is not None:
        out["ignition"] = (ignition, at)


def _input_bits(report: Any, at: datetime, out: Telemetry) -> None:
    """GTINF / GTIOS: input bit 7 is main power, output bit 0 is output 1."""
    inputs = report.inputs
    if inputs is not None:
        out["main_power"] = (bool(inputs & 0x80), at)
    outputs = report.outputs
    if outputs is not None:
        out["output1"] = (bool(outputs & 0x01), at)


def _positions(report: Any, at: datetime, out: Telemetry) -> None:
    """The newest position block: its cell (current when sent), and from a valid fix (accuracy
    above 0) the accuracy and speed at the fix time. Event reports repeat the last known fix with
    accuracy 0, which says nothing new about either."""
    positions = report.positions
    if not positions:
        return
    best = positions[-1]
    for p in positions:
        if p.fix_time is not None and (best.fix_time is None or p.fix_time > best.fix_time):
            best = p
    if best.cell_id is not None or best.lac is not None:
        out["cell"] = ({"mcc": best.mcc, "mnc": best.mnc, "lac": best.lac, "cell_id": best.cell_id}, at)
    if best.gps_accuracy and best.fix_time is not None:
        fix = best.fix_time
        out["gps_accuracy"] = (best.gps_accuracy, fix)
        if best.speed_kmh is not None:
            out["speed_kmh"] = (best.speed_kmh, fix)


def _serving_cell(report: Any, at: datetime, out: Telemetry) -> None:
    """GTGSM: the serving cell, with its receive level (0-63)."""
    cell = report.serving
    if cell.cell_id is not None or cell.lac is not None:
        out["cell"] = ({"mcc": cell.mcc, "mnc": cell.mnc, "lac": cell.lac, "cell_id": cell.cell_id,
                        "rx_level": cell.rx_level}, at)


def _roaming(report: Any, at: datetime, out: Telemetry) -> None:
    out["roaming"] = (report.roaming, at)


def _output_changed(report: Any, at: datetime, out: Telemetry) -> None:
    out[f"output{report.output_id}"] = (report.output_active, at)


_SPECIAL: Final[dict[str, Step]] = {"GTRMD": _roaming, "GTDOS": _output_changed, "GTGSM": _serving_cell}


class _Plan:
    __slots__ = ("constants", "fields", "steps")

    def __init__(self, fields: tuple[tuple[str, str], ...], steps: tuple[Step, ...],
                 constants: tuple[tuple[str, Any], ...]) -> None:
        self.fields = fields
        self.steps = steps
        self.constants = constants


def _plan(cls: type[Report], type_: str) -> _Plan:
    names = cls.model_fields
    fields = tuple((name, param) for name, param in FIELD_PARAMS.items() if name in names)
    steps: list[Step] = []
    if "status" in names:
        steps.append(_status)
    if issubclass(cls, MotionStateReport):
        steps.append(_motion)
    if cls.ignition is not Report.ignition:  # the class says something about it
        steps.append(_ignition)
    if "inputs" in names and "status" not in names:
        steps.append(_input_bits)
    if type_ in _SPECIAL:
        steps.append(_SPECIAL[type_])
    steps.append(_positions)
    return _Plan(fields, tuple(steps), tuple(EVENT_PARAMS.get(type_, {}).items()))


def held_key(report: Report) -> str:
    """Which reports of a device supersede each other before the flush: the same type, and alike
    in whether their newest position is a valid fix (a GTFRI without a fix must not hide the GPS
    accuracy and speed of the one before it). A `since` can therefore be late by as much as the
    reports of one kind that one flush puts together span (a second: fixed reports held back for
    TELEMETRY_INTERVAL_S all have the same device status)."""
    positions = report.positions
    if positions and not positions[-1].gps_accuracy:
        return report.type + "!"
    return report.type


# (class, type) -> plan. Aliases share a class (GTIGL / GTVGL) but not their constants.
_PLANS: dict[tuple[type, str], _Plan] = {}


def report_telemetry(report: Report) -> Telemetry:
    """Every parameter this report carries, as `{param: (value, at)}`."""
    key = (report.__class__, report.type)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS[key] = _plan(report.__class__, report.type)
    at = report.sent_at
    if at is None:
        return {}  # no send time, no way to say how old its values are (the gateway's clock is not the tracker's)
    out: Telemetry = {}
    for name, param in plan.fields:
        value = getattr(report, name)
        if value is not None:
            out[param] = (value, at)
    for step in plan.steps:
        step(report, at, out)
    for param, value in plan.constants:
        out[param] = (value, at)
    return out
