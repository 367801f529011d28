"""One model and one layout per `+RESP` report type (spec section 4). `REPORTS` is the table the
parser dispatches on; types whose wire layout is equal share a layout, and share a model unless
their event names differ. The position-related models (4.1) live here; `reports_info.py` and
`reports_events.py` hold the rest.

A report's `event` is the snake_case `events.type` storage writes for it (None for pure position
reports, GTFRI and GTRTL); `event_type` may refine it from the report's own fields.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

from .fields import Documented, HourMeter
from .layout import HEAD, POSITION, POSITIONS, TAIL, Group, Layout, Rest
from .messages import Report, Status, ignition_from_motion
from .reports_base import (
    Ber, FenceIdType, Mileage, Millivolts, ReportIdType, ReportIdTypeHex, Rssi, Satellites,
)
from .reports_events import (
    CellReport, GpsSignal, IdlingEnd, IdlingStart, IgnitionOff, IgnitionOn, LongStop, MainPowerConnected,
    MainPowerLost, MotionStateChanged, OutputChanged, PdpConnected, PowerOff, PowerOn, Roaming, VehicleStart,
    VehicleStop, VirtualIgnitionOff, VirtualIgnitionOn,
)
from .reports_info import (
    AllSettings, Battery, CommandSettings, DeviceInfo, GpsInfo, IccidReport, IoStatus, SatelliteReport,
    SelectedSettings, SignalQuality, TimeZone, Version,
)


class PositionReport(ReportIdType):
    """4.1.1 generic family: TOW SPD RTL DOG IGL VGL HBM; GEO (4.1.5) and EPS (4.1.3) narrow it."""

    number: Annotated[int, Documented((0, 1))] | None = None
    mileage_km: Mileage | None = None


class Tow(PositionReport):
    event: ClassVar[str | None] = "tow"


class Speed(PositionReport):
    """Report type 0 = speed outside the configured range, 1 = inside."""

    event: ClassVar[str | None] = "speed_alarm"

    @property
    def inside_range(self) -> bool | None:
        t = self.report_type
        return None if t is None else t == 1


class Locate(PositionReport):
    """GTRTL: the answer to RTO 1 (fresh fix), or the power-on location. A position, not an event."""

    event: ClassVar[str | None] = None


WATCHDOG_REASONS = {1: "time", 2: "ignition", 4: "gsm", 5: "pdp"}


class Watchdog(PositionReport):
    """GTDOG, sent before a watchdog reboot. V4.01 says report ID "valid value 1" while its example
    has 0; the ID is not checked beyond the family's 0-4."""

    event: ClassVar[str | None] = "watchdog_reboot"

    @property
    def reason(self) -> str | None:
        return WATCHDOG_REASONS.get(self.report_type)  # type: ignore[arg-type]


HARSH_SPEED_BANDS = {1: "low", 2: "medium", 3: "high"}


class HarshBehaviour(PositionReport):
    """GTHBM: report ID = speed band (1 low, 2 medium, 3 high); type 0 braking, 1 acceleration."""

    event: ClassVar[str | None] = "harsh_behaviour"

    @property
    def speed_band(self) -> str | None:
        return HARSH_SPEED_BANDS.get(self.report_id)  # type: ignore[arg-type]

    @property
    def behaviour(self) -> str | None:
        return {0: "braking", 1: "acceleration"}.get(self.report_type)  # type: ignore[arg-type]


class IgnitionLocationReport(PositionReport):
    """GTIGL / GTVGL: report type 0 = ignition off, 1 = on (spec 2.6; V4.01 p. 71). The report ID
    is 0 for the wire, or the DIS mode (2 voltage, 4 accelerometer) for virtual ignition."""

    event: ClassVar[str | None] = "ignition_location"

    @property
    def ignition(self) -> bool | None:
        t = self.report_type
        return None if t is None else t == 1

    @property
    def event_type(self) -> str | None:
        return {True: "ignition_on_location", False: "ignition_off_location"}.get(self.ignition)  # type: ignore[arg-type]


class Geofence(PositionReport):
    """GTGEO. The report ID is the fence ID in hex, the type 0 = exit, 1 = enter. V4.01 also speaks
    of "6 high bits ID, 2 low bits type" (p. 78); the examples only fit the nibble reading (`11` =
    fence 1 enters), which is used here. The reserved twelfth position field is `00` in the example
    though the table gives it length 0; it is not read either way."""

    event: ClassVar[str | None] = "geofence"
    report_id_type: FenceIdType | None = None

    @property
    def fence_id(self) -> int | None:
        return 0 if self.report_id_type is not None and self.report_id is None else self.report_id

    @property
    def entered(self) -> bool | None:
        t = self.report_type
        return None if t is None else t == 1


class ExternalPower(PositionReport):
    """4.1.3 GTEPS: field 4 is the external power voltage; type 0 = outside the range, 1 = inside."""

    event: ClassVar[str | None] = "external_power_alarm"
    report_id_type: Annotated[ReportIdTypeHex, Documented(pattern=r"^[0-2][01]$", says="0-2/0-1")] | None = None
    external_power_mv: Millivolts | None = None

    @property
    def inside_range(self) -> bool | None:
        t = self.report_type
        return None if t is None else t == 1


class FixedReport(ReportIdType):
    """4.1.2 GTFRI: 18 + 12·N fields. V4.01 sends N = 1; with N > 1 the tail moves by 12 per block."""

    report_id_type: Annotated[ReportIdTypeHex, Documented(pattern=r"^[1-5][0-6]$", says="1-5/0-6")] | None = None
    external_power_mv: Millivolts | None = None
    number: Annotated[int, Documented((0, 15))]  # the layout has already read this many blocks
    mileage_km: Mileage | None = None
    hour_meter_s: HourMeter | None = None
    battery_percent: Annotated[int, Documented((0, 100))] | None = None
    status: Status | None = None
    csq_rssi: Rssi | None = None
    csq_ber: Ber | None = None
    satellites: Satellites | None = None

    @property
    def ignition(self) -> bool | None:
        return self.status.ignition if self.status else None

    @property
    def output1(self) -> bool | None:
        return self.status.output1 if self.status else None


class LocationByCall(Report):
    """4.1.4 GTLBC: the caller's number and a position; no `number`, no mileage."""

    event: ClassVar[str | None] = "location_by_call"
    call_number: Annotated[str, Documented(pattern=r"^\+?[0-9*#]{1,20}$", says="+0-9*#, up to 20")] | None = None


class ParkingFence(ReportIdType):
    """4.1.6 GTGES: a parking fence set (type 1) or cancelled (type 0). ID as in GTGEO."""

    event: ClassVar[str | None] = "parking_fence"
    report_id_type: FenceIdType | None = None
    trigger_mode: Annotated[int, Documented((0, 0), (21, 22))] | None = None
    radius_m: Annotated[int, Documented((50, 6000000))] | None = None
    check_interval_s: Annotated[int, Documented((0, 0), (5, 86400))] | None = None
    number: Annotated[int, Documented((0, 1))] | None = None
    mileage_km: Mileage | None = None

    @property
    def fence_id(self) -> int | None:
        return 0 if self.report_id_type is not None and self.report_id is None else self.report_id

    @property
    def active(self) -> bool | None:
        t = self.report_type
        return None if t is None else t == 1


# Shared layouts. Indices in the comments are the spec's (header = 0).
_GENERIC = (*HEAD, None, "report_id_type", "number", POSITION, "mileage_km", *TAIL)  # 22
_EPS = (*HEAD, "external_power_mv", "report_id_type", "number", POSITION, "mileage_km", *TAIL)  # 22
_BARE = (*HEAD, *TAIL)  # 6
_POSITION_ONLY = (*HEAD, POSITION, *TAIL)  # 18
_STATE_POSITION = (*HEAD, "state", POSITION, *TAIL)  # 19
_IGNITION = (*HEAD, "duration_s", POSITION, "hour_meter_s", "mileage_km", *TAIL)  # 21
_VIRTUAL_IGNITION = (*HEAD, None, "report_type", "duration_s", POSITION, "hour_meter_s", "mileage_km", *TAIL)  # 23
_START_STOP = (*HEAD, None, None, POSITION, "mileage_km", *TAIL)  # 21
_SATELLITES = (*HEAD, "sv_count", Group("svs", ("sv_id", "power"), count="sv_count"), *TAIL)  # 7 + 2N
_GSM_CELL = ("mcc", "mnc", "lac", "cell_id", "rx_level", None)

REPORTS: dict[str, Layout] = {
    # 4.1 position-related
    "GTFRI": Layout(FixedReport, (
        *HEAD, "external_power_mv", "report_id_type", "number", POSITIONS, "mileage_km", "hour_meter_s",
        None, None, "battery_percent", "status", "csq_rssi", "csq_ber", "satellites", *TAIL,
    )),
    "GTTOW": Layout(Tow, _GENERIC),
    "GTSPD": Layout(Speed, _GENERIC),
    "GTRTL": Layout(Locate, _GENERIC),
    "GTDOG": Layout(Watchdog, _GENERIC),
    "GTIGL": Layout(IgnitionLocationReport, _GENERIC),
    "GTVGL": Layout(IgnitionLocationReport, _GENERIC),
    "GTHBM": Layout(HarshBehaviour, _GENERIC),
    "GTGEO": Layout(Geofence, _GENERIC),
    "GTEPS": Layout(ExternalPower, _EPS),
    "GTLBC": Layout(LocationByCall, (*HEAD, "call_number", POSITION, *TAIL)),
    "GTGES": Layout(ParkingFence, (
        *HEAD, None, "report_id_type", "trigger_mode", "radius_m", "check_interval_s", "number", POSITION,
        "mileage_km", *TAIL,
    )),
    # 4.2 device information
    "GTINF": Layout(DeviceInfo, (
        *HEAD, "state", "iccid", "csq_rssi", "csq_ber", None, "external_power_mv", None, "backup_battery_v", None,
        "led_on", None, None, "last_fix_time", None, None, None, "inputs", "outputs", "time_zone",
        "daylight_saving", *TAIL,
    )),
    # 4.3 answers to real-time queries
    "GTGPS": Layout(GpsInfo, (*HEAD, None, None, None, "report_mask", None, None, "last_fix_time", *TAIL)),
    "GTALM": Layout(AllSettings, (*HEAD, "total_packets", "current_packet", Rest("settings"), *TAIL)),
    "GTALC": Layout(SelectedSettings, (
        *HEAD, "config_mask", "more_packets", "current_packet", Rest("settings"), *TAIL,
    )),
    "GTALS": Layout(CommandSettings, (*HEAD, "command", Rest("settings"), *TAIL)),
    "GTCID": Layout(IccidReport, (*HEAD, "iccid", *TAIL)),
    "GTCSQ": Layout(SignalQuality, (*HEAD, "csq_rssi", "csq_ber", *TAIL)),
    "GTVER": Layout(Version, (*HEAD, "device_type", "software_version", "hardware_version", *TAIL)),
    "GTBAT": Layout(Battery, (*HEAD, None, "external_power_mv", None, "backup_battery_v", None, "led_on", *TAIL)),
    "GTIOS": Layout(IoStatus, (*HEAD, None, None, None, "inputs", "outputs", *TAIL)),
    "GTTMZ": Layout(TimeZone, (*HEAD, "time_zone", "daylight_saving", *TAIL)),
    "GTGSV": Layout(SatelliteReport, _SATELLITES),
    "GTRSV": Layout(SatelliteReport, _SATELLITES),
    "GTBSV": Layout(SatelliteReport, _SATELLITES),
    # 4.4 events
    "GTPNA": Layout(PowerOn, _BARE),
    "GTPFA": Layout(PowerOff, _BARE),
    "GTPDP": Layout(PdpConnected, _BARE),
    "GTMPN": Layout(MainPowerConnected, _POSITION_ONLY),
    "GTMPF": Layout(MainPowerLost, _POSITION_ONLY),
    "GTSTT": Layout(MotionStateChanged, _STATE_POSITION),
    "GTIGN": Layout(IgnitionOn, _IGNITION),
    "GTIGF": Layout(IgnitionOff, _IGNITION),
    "GTVGN": Layout(VirtualIgnitionOn, _VIRTUAL_IGNITION),
    "GTVGF": Layout(VirtualIgnitionOff, _VIRTUAL_IGNITION),
    "GTIDN": Layout(IdlingStart, _START_STOP),
    "GTSTR": Layout(VehicleStart, _START_STOP),
    "GTSTP": Layout(VehicleStop, _START_STOP),
    "GTLSP": Layout(LongStop, _START_STOP),
    "GTIDF": Layout(IdlingEnd, (*HEAD, "state", "duration_s", POSITION, "mileage_km", *TAIL)),
    # GTGSM has no device-name field: the fix type follows the IMEI.
    "GTGSM": Layout(CellReport, (
        "protocol_version", "imei", "fix_type", Group("neighbours", _GSM_CELL, count=6), Group("serving", _GSM_CELL),
        *TAIL,
    )),
    "GTGSS": Layout(GpsSignal, (*HEAD, "gps_signal", "satellites", "state", None, POSITION, *TAIL)),
    "GTDOS": Layout(OutputChanged, (*HEAD, "output_id", "output_active", POSITION, *TAIL)),
    "GTRMD": Layout(Roaming, (*HEAD, "roaming_state", POSITION, *TAIL)),
}

__all__ = [
    "REPORTS", "ExternalPower", "FixedReport", "Geofence", "HarshBehaviour", "IgnitionLocationReport", "Locate",
    "LocationByCall", "ParkingFence", "PositionReport", "Speed", "Tow", "Watchdog", "ignition_from_motion",
]
