"""The operator's command parameters: one frozen pydantic model per command type.

Every parameter is typed and range-checked against V4.01 chapter 3.2 before anything is encoded.
Fields are declared in wire order, so a validator may look at the fields before it (`info.data`)
and still report its error under its own name. `commands.py` maps the models onto wire slots.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Final

from pydantic import (
    AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator, model_validator,
)

# `,` splits slots and `$` ends the command; the device has no escaping for either.
_FORBIDDEN: Final[dict[str, str]] = {",": "a ','", "$": "a '$'"}


def _text(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {type(value).__name__}")
    for ch in value:
        if ch in _FORBIDDEN:
            raise ValueError(f"contains {_FORBIDDEN[ch]}, which the command line cannot carry")
        if not " " <= ch <= "~":
            raise ValueError(f"contains {ch!r}: only printable ASCII is allowed")
    # The vendor's examples show the device tolerating stray blanks, so it may trim them: refuse
    # values whose meaning would depend on that.
    if value != value.strip():
        raise ValueError("has leading or trailing blanks")
    return value


def _integer(value: Any) -> Any:
    # Numbers typed in the legacy mongo shell arrive as doubles; an integral double is accepted.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be an integer, not {type(value).__name__}")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"must be an integer, not {value!r}")
        return int(value)
    return value


def _flag(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"must be true/false (or 0/1), not {value!r}")


def _one_of(*allowed: int) -> AfterValidator:
    def check(value: int) -> int:
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(map(str, allowed))}, not {value}")
        return value
    return AfterValidator(check)


def _pattern(regex: str, what: str) -> AfterValidator:
    compiled = re.compile(regex)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"is not {what}: {value!r}")
        return value
    return AfterValidator(check)


def _between(low: int, high: int) -> AfterValidator:
    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, not {value}")
        return value
    return AfterValidator(check)


def _length(low: int, high: int) -> AfterValidator:
    def check(value: str) -> str:
        if not low <= len(value) <= high:
            span = f"at most {high}" if low == 0 else f"{low}-{high}"
            raise ValueError(f"must be {span} characters long, not {len(value)}")
        return value
    return AfterValidator(check)


def _zero_or_at_least(low: int) -> AfterValidator:
    def check(value: int) -> int:
        if 0 < value < low:
            raise ValueError(f"must be 0 (off) or at least {low}, not {value}")
        return value
    return AfterValidator(check)


Text = Annotated[str, BeforeValidator(_text)]
Int = Annotated[int, BeforeValidator(_integer)]
Flag = Annotated[bool, BeforeValidator(_flag)]
Port = Annotated[Int, _between(0, 65535)]
HHMM = Annotated[Text, _pattern(r"([01][0-9]|2[0-3])[0-5][0-9]", "an HHMM time of day")]

PASSWORD_RE: Final = re.compile(r"[0-9A-Za-z]{4,6}")
SERIAL_RE: Final = re.compile(r"[0-9A-Fa-f]{4}")

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE: Final = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
# Report mode 8 (HTTP GET) puts `host[:port][/path]` in the host slot; the path is sent before
# every message.
_URL_RE: Final = re.compile(r"(?P<host>[^:/]+)(?::(?P<port>[0-9]{1,5}))?(?:/[A-Za-z0-9._~!&'()*+;=:@%/-]*)?")


def _ipv4(value: str) -> str:
    try:
        ipaddress.IPv4Address(value)
    except ValueError as exc:
        raise ValueError(f"is not an IPv4 address ({exc})") from None
    return value


def _check_host(host: str) -> None:
    if re.fullmatch(r"[0-9.]+", host):
        _ipv4(host)
    elif not _HOSTNAME_RE.fullmatch(host):
        raise ValueError(f"is not an IPv4 address or a host name: {host!r}")


class Params(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NoParams(Params):
    """block, unblock, locate, reboot, get_info, get_version take no parameters."""


# The blocks AT+GTRTO sub-command 2 can read one at a time (the GTALC configuration-mask names,
# V4.01 3.2.7.1); V4.01 asks for `TMZ` where it means TMA.
READABLE_BLOCKS: Final = frozenset(
    "BSI SRI CFG TOW EPS DIS TMZ FRI GEO SPD PIN OWH DOG IDL HMC HBM WLT HRM PDS OUT SSR RMD FFC CMD UDF GAM "
    "VVS AVS".split())


def _block_tag(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {type(value).__name__}")
    tag = value.upper()
    tag = "TMZ" if tag == "TMA" else tag
    if tag not in READABLE_BLOCKS:
        raise ValueError(f"is not a command whose settings the tracker can report: {value!r}")
    return tag


class GetConfig(Params):
    """AT+GTRTO sub-command 2 (V4.01 3.2.7.1, p. 56-60): no `command` reads every setting
    (+RESP:GTALM, four packets); `command` such as "FRI" reads that one (+RESP:GTALS)."""

    command: Annotated[str, BeforeValidator(_block_tag)] | None = None


class SetServer(Params):
    """AT+GTSRI (V4.01 3.2.1.2, p. 11-14). Empty optional slots: V4.01 does not say whether the
    device keeps or clears the setting (spec 6.2 #5)."""

    report_mode: Annotated[Int, _one_of(0, 1, 2, 3, 4, 5, 6, 8)] = 3
    buffer_mode: Annotated[Int, _one_of(0, 1, 2)] | None = None
    host: Annotated[Text, _length(1, 60)]
    port: Port
    # The backup slot is 15 characters: an IPv4 address only, no host name.
    backup_host: Annotated[Text, _length(0, 15), AfterValidator(_ipv4)] | None = None
    backup_port: Port | None = None
    sms_gateway: Annotated[Text, _length(0, 20),
                           _pattern(r"\+?[0-9]{1,19}", "a phone number or short code")] | None = None
    heartbeat_min: Annotated[Int, _between(0, 360), _zero_or_at_least(2)] | None = None
    sack_enable: Flag | None = None
    # <Protocol Format> (slot 11): 0 ASCII (the default), 1 HEX. Commands stay ASCII either way.
    protocol_format: Annotated[Int, _one_of(0, 1)] | None = None

    @field_validator("host")
    @classmethod
    def _host(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("report_mode") == 8:
            match = _URL_RE.fullmatch(value)
            if match is None:
                raise ValueError(f"is not host[:port][/path] (report mode 8): {value!r}")
            _check_host(match["host"])
            if match["port"] is not None and int(match["port"]) > 65535:
                raise ValueError(f"has a port above 65535: {value!r}")
        else:
            _check_host(value)
        return value


class SetApn(Params):
    """AT+GTBSI (V4.01 3.2.1.1, p. 9-10). An empty user name or password CLEARS it on the device."""

    apn: Annotated[Text, _length(1, 40),
                   _pattern(r"[A-Za-z0-9._-]+", "an access point name")]
    user: Annotated[Text, _length(0, 30)] | None = None
    password: Annotated[Text, _length(0, 30)] | None = None


# FRI modes (V4.01 3.2.3.1, p. 27-29) and the parameters each one runs on.
FRI_NEEDS: Final[dict[int, tuple[str, ...]]] = {
    1: ("send_interval_s",), 2: ("distance_m",), 3: ("mileage_m",),
    4: ("send_interval_s", "mileage_m"), 5: ("send_interval_s", "mileage_m"),
}


class SetReportInterval(Params):
    """AT+GTFRI (V4.01 3.2.3.1, p. 27-30). Mode 0 stops fixed reports; 1 time; 2 distance;
    3 mileage; 4 time AND mileage; 5 time OR mileage."""

    mode: Annotated[Int, _between(0, 5)] = 1
    discard_no_fix: Flag | None = None
    period_enable: Flag | None = None
    start_time: HHMM | None = None
    end_time: HHMM | None = None
    send_interval_s: Annotated[Int, _between(5, 86400)] | None = Field(default=None, validate_default=True)
    distance_m: Annotated[Int, _between(50, 65535)] | None = Field(default=None, validate_default=True)
    mileage_m: Annotated[Int, _between(50, 65535)] | None = Field(default=None, validate_default=True)
    corner_deg: Annotated[Int, _between(0, 180)] | None = None
    # Fix-and-send interval while the engine is off (power saving 0 or 2); below 60 s GPS stays on.
    igf_interval_s: Annotated[Int, _between(0, 86400), _zero_or_at_least(5)] | None = None

    @field_validator("send_interval_s", "distance_m", "mileage_m")
    @classmethod
    def _needed_by_mode(cls, value: int | None, info: ValidationInfo) -> int | None:
        mode = info.data.get("mode")
        if value is None and isinstance(mode, int) and info.field_name in FRI_NEEDS.get(mode, ()):
            raise ValueError(f"is required in mode {mode}")
        return value


def _hex_mask(digits: int) -> AfterValidator:
    """A mask written as hex digits (as V4.01 and its configuration dumps write them), at most
    `digits` of them."""
    def check(value: str) -> str:
        if not re.fullmatch(rf"[0-9A-Fa-f]{{1,{digits}}}", value):
            raise ValueError(f"is not a mask of 1-{digits} hex digits: {value!r}")
        return value.upper()
    return AfterValidator(check)


class SetHexMasks(Params):
    """AT+GTHRM (V4.01 4.1, p. 135-140; spec 3.30): which optional parts each HEX frame carries.
    An empty mask leaves the device's setting as it is [INF]. Keep the Length bits set (ACK bit 0,
    RSP/EVT bit 7, INF bit 0, HBD bit 0): without them a HEX frame cannot be framed reliably."""

    ack_mask: Annotated[Text, _hex_mask(2)] | None = None  # default 6F
    rsp_mask: Annotated[Text, _hex_mask(8)] | None = None  # default FE17BF
    evt_mask: Annotated[Text, _hex_mask(8)] | None = None  # default FE17BF
    inf_mask: Annotated[Text, _hex_mask(8)] | None = None  # default F77D
    hbd_mask: Annotated[Text, _hex_mask(2)] | None = None  # default EF

    @model_validator(mode="after")
    def _at_least_one(self) -> SetHexMasks:
        if all(getattr(self, name) is None for name in type(self).model_fields):
            raise ValueError("set at least one of ack_mask, rsp_mask, evt_mask, inf_mask, hbd_mask")
        return self
