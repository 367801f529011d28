"""Device information and answers to real-time queries (spec 4.2-4.3): GTINF, GTGPS, the settings
dumps GTALM/GTALC/GTALS, GTCID, GTCSQ, GTVER, GTBAT, GTIOS, GTTMZ and GTGSV/GTRSV/GTBSV.
Their layouts are in the `REPORTS` table in `reports.py`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, ClassVar

from pydantic import Field, ValidationInfo, model_validator

from .fields import Documented, Hex4, HexStr, Time
from .messages import Model, Report
from .reports_base import (
    BatteryVolts, Ber, HexByte, Iccid, LedOn, Millivolts, MotionStateReport, Rssi, UtcOffset, utc_offset_minutes,
)


class _InputsOutputs:
    """`II` / `OO` decoding (spec 2.4) for reports that carry them as separate fields."""

    if TYPE_CHECKING:
        inputs: int | None
        outputs: int | None

    @property
    def ignition_input(self) -> bool | None:
        """Input bit 0: the ignition-detection wire (GV50P; reserved on a plain GV50)."""
        return None if self.inputs is None else bool(self.inputs & 0x01)

    @property
    def main_power(self) -> bool | None:
        """Input bit 7: main power connected (since V4.00)."""
        return None if self.inputs is None else bool(self.inputs & 0x80)

    @property
    def output1(self) -> bool | None:
        return None if self.outputs is None else bool(self.outputs & 0x01)


class DeviceInfo(_InputsOutputs, MotionStateReport):
    """4.2 GTINF, sent every CFG info-report interval. `ignition` follows the motion state."""

    event: ClassVar[str | None] = "device_info"
    iccid: Iccid | None = None
    csq_rssi: Rssi | None = None
    csq_ber: Ber | None = None
    external_power_mv: Millivolts | None = None
    backup_battery_v: BatteryVolts | None = None
    led_on: LedOn | None = None
    last_fix_time: Time | None = None
    inputs: HexByte | None = None
    outputs: HexByte | None = None  # GV50P digital output; reserved on GV50
    time_zone: UtcOffset | None = None
    daylight_saving: bool | None = None

    @property
    def utc_offset_minutes(self) -> int | None:
        return utc_offset_minutes(self.time_zone)


class GpsInfo(Report):
    """4.3.1 GTGPS (RTO 0)."""

    event: ClassVar[str | None] = "gps_info"
    report_mask: Hex4 | None = None  # the Report Composition Mask, CFG slot 7
    last_fix_time: Time | None = None


# The 3-letter tags that open a configuration block in GTALM/GTALC (4.3.2). The GTALC tables call
# the TMA block `TMZ` while the examples use `TMA` (spec 7); both are accepted.
SETTING_TAGS = frozenset(
    "BSI SRI CFG TOW EPS DIS TMA TMZ FRI GEO SPD PIN OWH DOG IDL HMC HBM WLT HRM PDS OUT SSR RMD "
    "FFC CMD UDF GAM VVS AVS".split()
)


class SettingsReport(Report):
    """The settings dumps (4.3.2-4.3.4). `settings` keeps the configuration fields as sent, because
    their layout depends on each command's slot list; `blocks()` gives a light structured view."""

    event: ClassVar[str | None] = "settings"
    settings: tuple[str | None, ...] = ()

    def blocks(self) -> dict[str, tuple[str | None, ...]]:
        """Settings split at each block tag: `{"VVS": ("13500", "600", "10", None, None), ...}`.
        A value that happens to equal a tag (a device name `FRI`, say) would open a false block."""
        blocks: dict[str, tuple[str | None, ...]] = {}
        tag: str | None = None
        start = 0
        for i, value in enumerate(self.settings):
            if value in SETTING_TAGS:
                if tag is not None:
                    blocks[tag] = self.settings[start:i]
                tag, start = value, i + 1
        if tag is not None:
            blocks[tag] = self.settings[start:]
        return blocks


class AllSettings(SettingsReport):
    """4.3.2 GTALM (RTO 2): all settings in four packets."""

    total_packets: Annotated[int, Documented((1, 4))]
    current_packet: Annotated[int, Documented((1, 4))]


class SelectedSettings(SettingsReport):
    """4.3.3 GTALC (RTO 2 with a configuration mask)."""

    config_mask: HexStr = Field(max_length=16)  # the blocks in *this* packet, bits as in RTO
    more_packets: bool  # 1 = more packets follow, 0 = last
    current_packet: Annotated[int, Documented((1, 20))]


class CommandSettings(SettingsReport):
    """4.3.4 GTALS (RTO 2 with a command name): that command's slots 1 .. serial-1."""

    command: str = Field(pattern=r"^[A-Z]{3}$")

    def blocks(self) -> dict[str, tuple[str | None, ...]]:
        return {self.command: self.settings}


class IccidReport(Report):
    """4.3.5 GTCID: sent on RTO 6, and at power-on / TCP reconnect with event-mask bit 4."""

    event: ClassVar[str | None] = "iccid"
    iccid: Iccid


class SignalQuality(Report):
    """4.3.6 GTCSQ (RTO 7)."""

    event: ClassVar[str | None] = "signal_quality"
    csq_rssi: Rssi | None = None
    csq_ber: Ber | None = None


class Version(Report):
    """4.3.7 GTVER (RTO 8). Versions are hex `MMmm`: `020E` is 2.14."""

    event: ClassVar[str | None] = "version"
    device_type: str | None = Field(default=None, max_length=10)
    software_version: Hex4 | None = None
    hardware_version: Hex4 | None = None

    @staticmethod
    def _dotted(value: str | None) -> str | None:
        return None if value is None else f"{int(value[:2], 16)}.{int(value[2:], 16):02d}"

    @property
    def firmware(self) -> str | None:
        return self._dotted(self.software_version)

    @property
    def hardware(self) -> str | None:
        return self._dotted(self.hardware_version)


class Battery(Report):
    """4.3.8 GTBAT (RTO 9). The battery voltage means something only without external power."""

    event: ClassVar[str | None] = "battery"
    external_power_mv: Millivolts | None = None
    backup_battery_v: BatteryVolts | None = None
    led_on: LedOn | None = None


class IoStatus(_InputsOutputs, Report):
    """4.3.9 GTIOS (RTO A). The vendor example fills the three reserved fields with `0`."""

    event: ClassVar[str | None] = "io_status"
    inputs: HexByte | None = None
    outputs: HexByte | None = None


class TimeZone(Report):
    """4.3.10 GTTMZ (RTO B)."""

    event: ClassVar[str | None] = "time_zone"
    time_zone: UtcOffset | None = None
    daylight_saving: bool | None = None

    @property
    def utc_offset_minutes(self) -> int | None:
        return utc_offset_minutes(self.time_zone)


class SvSignal(Model):
    sv_id: Annotated[int, Documented((0, 99))]
    power: Annotated[int, Documented((0, 99))]  # 0 = none


_MAX_SVS = {"GTGSV": 24, "GTRSV": 32, "GTBSV": 37}
CONSTELLATIONS = {"GTGSV": "gps", "GTRSV": "glonass", "GTBSV": "beidou"}


class SatelliteReport(Report):
    """4.3.11 GTGSV / GTRSV / GTBSV (RTO E): 7 + 2·N fields, N = `sv_count`."""

    event: ClassVar[str | None] = "satellites"
    sv_count: int = Field(ge=0)  # the layout has already read this many groups
    svs: tuple[SvSignal, ...] = ()

    @model_validator(mode="after")
    def _count_in_range(self, info: ValidationInfo) -> SatelliteReport:
        # Documented per type, so checked here and kept like a `Documented` field (see fields.py).
        limit = _MAX_SVS.get(self.type, 37)
        if self.sv_count > limit:
            if info.context is None:
                raise ValueError(f"{self.type} allows at most {limit} satellites, got {self.sv_count}")
            info.context.append(f"sv_count {self.sv_count} outside 0-{limit}")
        return self

    @property
    def constellation(self) -> str | None:
        return CONSTELLATIONS.get(self.type)
