"""Event reports (spec 4.4): power, main power, motion state, ignition (hard-wired and virtual),
idling, start/stop, cells, GPS signal, output and roaming. Their layouts are in the `REPORTS`
table in `reports.py`.

The position block of these reports is the **last known** fix (accuracy 0) with the current
cell: storage keeps it, `Position.valid` says it is not fresh.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import BeforeValidator, Field

from .fields import Documented, HexStr, HourMeter
from .messages import Model, Report
from .reports_base import Mileage, MotionStateReport, Satellites, Seconds6


class PowerOn(Report):
    """4.4.1 GTPNA."""

    event: ClassVar[str | None] = "power_on"


class PowerOff(Report):
    """4.4.1 GTPFA."""

    event: ClassVar[str | None] = "power_off"


class PdpConnected(Report):
    """4.4.1 GTPDP: a GPRS/PDP connection came up. Never buffered."""

    event: ClassVar[str | None] = "pdp_connected"


class MainPowerConnected(Report):
    """4.4.2 GTMPN."""

    event: ClassVar[str | None] = "main_power_connected"


class MainPowerLost(Report):
    """4.4.2 GTMPF."""

    event: ClassVar[str | None] = "main_power_lost"


class MotionStateChanged(MotionStateReport):
    """4.4.3 GTSTT: `state` is the new motion state."""

    event: ClassVar[str | None] = "motion_state"


class IgnitionReport(Report):
    """4.4.4 GTIGN / GTIGF. `duration_s` is how long the ignition was in the state it just left
    (off for IGN, on for IGF), capped at 999999 s."""

    ignition_after: ClassVar[bool] = True
    duration_s: Seconds6 | None = None
    hour_meter_s: HourMeter | None = None
    mileage_km: Mileage | None = None

    @property
    def ignition(self) -> bool:
        return self.ignition_after


class IgnitionOn(IgnitionReport):
    event: ClassVar[str | None] = "ignition_on"
    ignition_after: ClassVar[bool] = True


class IgnitionOff(IgnitionReport):
    event: ClassVar[str | None] = "ignition_off"
    ignition_after: ClassVar[bool] = False


class VirtualIgnitionReport(IgnitionReport):
    """4.4.5 GTVGN / GTVGF: ignition simulated from the supply voltage or the accelerometer (DIS
    mode 2 or 4). They are the same events as GTIGN / GTIGF; `report_type` says which source."""

    report_type: Annotated[int, Documented((0, 4))] | None = None  # 2 voltage, 4 accelerometer; 0, 1, 3 reserved

    @property
    def detection(self) -> str | None:
        return {2: "voltage", 4: "accelerometer"}.get(self.report_type)  # type: ignore[arg-type]


class VirtualIgnitionOn(VirtualIgnitionReport):
    event: ClassVar[str | None] = "ignition_on"
    ignition_after: ClassVar[bool] = True


class VirtualIgnitionOff(VirtualIgnitionReport):
    event: ClassVar[str | None] = "ignition_off"
    ignition_after: ClassVar[bool] = False


class StartStopReport(Report):
    """4.4.6 GTIDN / GTSTR / GTSTP / GTLSP: two reserved fields, a position and the mileage."""

    mileage_km: Mileage | None = None


class IdlingStart(StartStopReport):
    event: ClassVar[str | None] = "idling_start"


class VehicleStart(StartStopReport):
    event: ClassVar[str | None] = "vehicle_start"


class VehicleStop(StartStopReport):
    event: ClassVar[str | None] = "vehicle_stop"


class LongStop(StartStopReport):
    event: ClassVar[str | None] = "long_stop"


class IdlingEnd(MotionStateReport):
    """4.4.7 GTIDF: `state` is the motion state on leaving idle (11, 12, 16 or 22)."""

    event: ClassVar[str | None] = "idling_end"
    duration_s: Seconds6 | None = None
    mileage_km: Mileage | None = None


class GsmCell(Model):
    """One cell of GTGSM. LAC / cell `FFFF` means unknown. RX level 0 = -110 dBm ... 63 = -47 dBm."""

    mcc: str | None = None
    mnc: str | None = None
    lac: HexStr | None = None
    cell_id: HexStr | None = None
    rx_level: Annotated[int, Documented((0, 63))] | None = None


def _present_cells(value: Any) -> Any:
    """A missing neighbour leaves all six of its fields empty: drop it."""
    if isinstance(value, (list, tuple)):
        return [c for c in value if not isinstance(c, dict) or any(v is not None for v in c.values())]
    return value


class CellReport(Report):
    """4.4.8 GTGSM: six neighbour slots and the serving cell. It has **no device-name field**."""

    event: ClassVar[str | None] = "cell_info"
    # The request the cells belong to. TOW (GSM report bit 4) and INF come from the HEX GIR trigger
    # types (V4.01 p. 156); the ASCII examples only show the others. GL500 lines send `STR` (a start
    # report), kept with a warning.
    fix_type: Annotated[str, Documented(
        pattern="^(SOS|RTL|LBC|FRI|GIR|TOW|INF)$", says="SOS/RTL/LBC/FRI/GIR/TOW/INF",
    )]
    neighbours: Annotated[tuple[GsmCell, ...], BeforeValidator(_present_cells)] = ()
    serving: GsmCell


class GpsSignal(MotionStateReport):
    """4.4.9 GTGSS: `gps_signal` False = signal lost / no fix, True = recovered."""

    event: ClassVar[str | None] = "gps_signal"
    gps_signal: bool
    satellites: Satellites | None = None  # empty without a fix


class OutputChanged(Report):
    """4.4.10 GTDOS (GV50P): the wave-shape-1 output changed."""

    event: ClassVar[str | None] = "output_changed"
    output_id: Annotated[int, Documented((1, 2))]
    output_active: bool


class FirmwareUpdate(Report):
    """HEX +EVT type 15 (GTUPD, over-the-air firmware update, V4.01 p. 163). It exists only in HEX:
    V4.01 gives it no ASCII form, so it is not in `REPORTS`. `code` and `retry` are as sent; V4.01
    does not say what the codes mean."""

    event: ClassVar[str | None] = "firmware_update"
    code: int = Field(ge=0, le=0xFFFF)  # two bytes and one on the wire: the bounds are the format
    retry: int = Field(ge=0, le=0xFF)
    mileage_km: Mileage | None = None


ROAMING_STATES = {0: "home", 1: "known_roaming", 2: "unknown_roaming", 3: "blocking_report"}


class Roaming(Report):
    """4.4.11 GTRMD."""

    event: ClassVar[str | None] = "roaming"
    roaming_state: Annotated[int, Documented((0, 3))]

    @property
    def roaming(self) -> str | None:
        return ROAMING_STATES.get(self.roaming_state)
