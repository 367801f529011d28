"""Profiles: the wanted settings of a set of trackers, by name. Checking them, and working out
which values apply to one tracker.

A profile (`profiles` collection, `_id` = its name) holds `settings` (`{block: {field: value}}`,
in the block and field names of `devices.config`) and `applies_to` (`{imeis, groups, all}`).

Only blocks that one of the gateway's own commands can set are accepted (`SETTABLE`): a value no
command can carry to the tracker could never converge. Each rejected value gives one plain line.

Which value wins when several profiles name the same field of one tracker (`resolve`): the most
specific assignment. A profile that lists the tracker's IMEI beats one that names its group, and a
group beats `all`. Between two profiles of the same kind, the one written last (`updated_at`)
wins, then the name that sorts first. This is decided field by field, so a per-tracker profile can
override just the APN of a group's profile and keep the rest.

Secrets (the APN password) are never shown in full: `config_target` and every printed form carry
`***` and a short fingerprint, which is enough to tell that a secret changed.

Pure: no database, no gevent.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Annotated, Any, Final

from pydantic import TypeAdapter

from ..protocol.command_params import Params
from ..protocol.commands import COMMANDS, command_problems
from ..protocol.config_blocks import BLOCKS
from ..protocol.fields import is_imei

# The blocks a profile may set, and the command that sets each one. The order is the order in
# which a tracker gets them: SRI last, because a new server may take the tracker away from here;
# BSI just before it, because a wrong APN cuts the tracker off: the rest is set by then.
SETTABLE: Final[dict[str, str]] = {
    "fri": "set_report_interval", "hrm": "set_hex_masks", "bsi": "set_apn", "sri": "set_server",
}
# `devices.config_state.state`, in the order they are shown.
STATES: Final[tuple[str, ...]] = ("in_sync", "applying", "waiting_offline", "drifted", "failed")
SECRETS: Final[frozenset[tuple[str, str]]] = frozenset({("bsi", "password")})
# Fields the command would clear on the tracker when left empty (V4.01 3.2.1.1): the profile must
# say what it wants there ("" for none).
MUST_GIVE: Final[dict[str, tuple[str, ...]]] = {"bsi": ("apn", "user", "password")}
NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
HIDDEN: Final = "***"
# How an assignment ranks: the most specific wins.
RANK: Final[dict[str, int]] = {"imei": 3, "group": 2, "all": 1}
EPOCH: Final = datetime(1970, 1, 1, tzinfo=timezone.utc)


class ProfileError(ValueError):
    """A profile that cannot be used; `problems` has one plain line per rejected value."""

    def __init__(self, name: str, problems: list[str]) -> None:
        super().__init__(f"profile {name!r} is not valid: " + "; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Profile:
    name: str
    settings: dict[str, dict[str, Any]]   # validated, in the command's own types
    imeis: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    all: bool = False
    updated_at: datetime = EPOCH

    def match(self, imei: str, group: str | None) -> str | None:
        """How this profile reaches the tracker (`imei`, `group`, `all`), or None."""
        if imei in self.imeis:
            return "imei"
        if group is not None and group in self.groups:
            return "group"
        return "all" if self.all else None


@dataclass(frozen=True)
class Wanted:
    value: Any
    profile: str
    via: str  # imei | group | all


Target = dict[str, dict[str, Wanted]]


def fingerprint(value: Any) -> str:
    return hashlib.sha256(str(value).encode()).hexdigest()[:8]


def shown(block: str, name: str, value: Any) -> Any:
    """A value as it may be printed or stored for everyone to read."""
    if (block, name) in SECRETS and value not in (None, ""):
        return f"{HIDDEN} ({fingerprint(value)})"
    return value


# --- checking ---

def _settings_problems(settings: Any) -> tuple[dict[str, dict[str, Any]], list[str]]:
    if not isinstance(settings, Mapping) or not settings:
        return {}, ["settings: give at least one block, such as {\"fri\": {\"send_interval_s\": 30}}"]
    good: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for block, fields in settings.items():
        where = f"settings.{block}"
        if block not in SETTABLE:
            known = "no such block" if str(block).upper() not in BLOCKS else "no command the gateway sends sets it"
            problems.append(f"{where}: {known} (a profile can set {', '.join(sorted(SETTABLE))})")
            continue
        if not isinstance(fields, Mapping) or not fields:
            problems.append(f"{where}: give the fields to set, such as {{\"field\": value}}")
            continue
        command = SETTABLE[block]
        model: type[Params] = COMMANDS[command].model
        unknown = [name for name in fields if name not in model.model_fields]
        for name in unknown:
            problems.append(f"{where}.{name}: not a setting {command} can change "
                            f"(it changes {', '.join(model.model_fields)})")
        missing = [name for name in MUST_GIVE.get(block, ()) if name not in fields]
        for name in missing:
            problems.append(f"{where}.{name}: required with this block (leaving it out would clear it on the "
                            f"tracker; use \"\" for none)")
        if missing:
            continue
        bad = command_problems(command, {name: value for name, value in fields.items() if name not in unknown})
        # A field the profile leaves out but the command needs (SRI's host, FRI's interval in mode 1)
        # comes from the tracker's own settings when it is sent (`command_for`).
        bad = [(name, reason) for name, reason in bad if name in fields or not reason.startswith("is required")]
        for name, reason in bad:
            value = shown(block, name, fields.get(name))
            problems.append(f"{where}.{name}: {reason}" + (f" (value {value!r})" if name in fields else ""))
        if not bad and not unknown:
            good[block] = {name: _typed(model, name, value) for name, value in fields.items()}
    return good, problems


def _typed(model: type[Params], name: str, value: Any) -> Any:
    """One field in the command's own type (30.0 -> 30, 1 -> True, "e7" -> "E7")."""
    info = model.model_fields[name]
    annotation: Any = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
    return TypeAdapter(annotation).validate_python(value)


def typed_field(block: str, name: str, value: Any) -> Any:
    """A value in the type of its field (KeyError: no such block or field; pydantic's
    ValidationError: not a valid value)."""
    model: type[Params] = COMMANDS[SETTABLE[block]].model
    if name not in model.model_fields:
        raise KeyError(name)
    return _typed(model, name, value)


def _applies_problems(applies: Any) -> tuple[tuple[frozenset[str], frozenset[str], bool], list[str]]:
    empty: tuple[frozenset[str], frozenset[str], bool] = (frozenset(), frozenset(), False)
    if applies is None:
        return empty, []
    if not isinstance(applies, Mapping):
        return empty, ["applies_to: must be an object {imeis: [...], groups: [...], all: true|false}"]
    problems = [f"applies_to.{key}: unknown (use imeis, groups or all)" for key in applies
                if key not in ("imeis", "groups", "all")]
    imeis, groups = applies.get("imeis") or [], applies.get("groups") or []
    if not isinstance(imeis, list) or not all(is_imei(i) for i in imeis):
        problems.append("applies_to.imeis: must be a list of IMEIs (14 or 15 digits)")
        imeis = []
    if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
        problems.append("applies_to.groups: must be a list of group names")
        groups = []
    every = applies.get("all", False)
    if not isinstance(every, bool):
        problems.append("applies_to.all: must be true or false")
        every = False
    return (frozenset(imeis), frozenset(groups), every), problems


def check_profile(doc: Mapping[str, Any]) -> Profile:
    """The profile a document describes; ProfileError with one line per problem."""
    name = doc.get("_id")
    problems: list[str] = []
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        problems.append("name: 1-64 letters, digits, '_', '.', '-', starting with a letter or digit")
    settings, more = _settings_problems(doc.get("settings"))
    problems += more
    (imeis, groups, every), more = _applies_problems(doc.get("applies_to"))
    problems += more
    if problems:
        raise ProfileError(str(name), problems)
    updated = doc.get("updated_at")
    return Profile(str(name), settings, imeis, groups, every, updated if isinstance(updated, datetime) else EPOCH)


# --- who gets what ---

def resolve(imei: str, group: str | None, profiles: list[Profile]) -> Target:
    """The wanted values of one tracker, each with the profile it comes from (see the module text)."""
    ranked: list[tuple[int, datetime, str, Profile, str]] = []
    for profile in profiles:
        via = profile.match(imei, group)
        if via is not None:
            ranked.append((RANK[via], profile.updated_at, profile.name, profile, via))
    # Weakest first, so that stronger ones overwrite; among equals the last written, then the first name, wins.
    ranked.sort(key=lambda r: (r[0], r[1], _reverse(r[2])))
    target: Target = {}
    for _, _, _, profile, via in ranked:
        for block, fields in profile.settings.items():
            for name, value in fields.items():
                target.setdefault(block, {})[name] = Wanted(value, profile.name, via)
    return {block: target[block] for block in SETTABLE if block in target}


def _reverse(text: str) -> tuple[int, ...]:
    return tuple(-ord(ch) for ch in text) + (0,)


def public_target(target: Target) -> dict[str, dict[str, dict[str, Any]]]:
    """`devices.config_target`: each wanted value (secrets hidden) and where it comes from."""
    return {block: {name: {"value": shown(block, name, w.value), "profile": w.profile, "via": w.via}
                    for name, w in fields.items()} for block, fields in target.items()}


# --- wanted against actual ---

def _normal(block: str, name: str, value: Any) -> Any:
    if isinstance(value, str) and block == "hrm":
        try:
            return int(value, 16)
        except ValueError:
            return value
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def same(block: str, name: str, wanted: Any, actual: Any) -> bool:
    if wanted == "" and actual is None:
        return True  # an empty text slot reads back as nothing
    return bool(_normal(block, name, wanted) == _normal(block, name, actual))


@dataclass
class Comparison:
    """Per block: the fields that differ (wanted, actual), and whether the block's values were
    confirmed by the tracker's own settings dump (not only by an acknowledged command)."""

    differs: dict[str, dict[str, tuple[Any, Any]]] = field(default_factory=dict)
    unconfirmed: list[str] = field(default_factory=list)

    @property
    def in_sync(self) -> bool:
        return not self.differs and not self.unconfirmed


def compare(target: Target, config: Mapping[str, Any], secrets_applied: Mapping[str, Any]) -> Comparison:
    """`config` is `devices.config`; `secrets_applied` is `devices.config_secrets` (`{block: {field:
    fingerprint}}` of the secrets the tracker acknowledged: a dump never shows them)."""
    result = Comparison()
    for block, fields in target.items():
        held = config.get(block) if isinstance(config.get(block), Mapping) else {}
        assert isinstance(held, Mapping)
        for name, wanted in fields.items():
            if (block, name) in SECRETS:
                applied = secrets_applied.get(block)
                if not isinstance(applied, Mapping) or applied.get(name) != fingerprint(wanted.value):
                    result.differs.setdefault(block, {})[name] = (HIDDEN, None)
                continue
            actual = held.get(name)
            if not same(block, name, wanted.value, actual):
                result.differs.setdefault(block, {})[name] = (wanted.value, actual)
        if block not in result.differs and held.get("source") != "report":
            result.unconfirmed.append(block)
    return result


def unknown_defaults(block: str, target: Target, config: Mapping[str, Any]) -> list[str]:
    """Fields the block's command always sends (required, or with a default such as FRI's mode) that neither the
    profile nor the tracker's known settings give: sending the default could change a setting the
    profile does not name, so the tracker is asked for its settings first."""
    model = COMMANDS[SETTABLE[block]].model
    held = config.get(block) if isinstance(config.get(block), Mapping) else {}
    assert isinstance(held, Mapping)
    return [name for name, info in model.model_fields.items()
            if _always_sent(info) and name not in target.get(block, {}) and held.get(name) is None]


def _always_sent(info: Any) -> bool:
    return bool(info.is_required() or info.default is not None)


def command_for(block: str, target: Target, config: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The command that sets a block to its wanted values. A field the command would otherwise send
    with its default (SRI's report mode, FRI's mode) takes the tracker's current value, so a
    profile changes only what it names."""
    command = SETTABLE[block]
    model = COMMANDS[command].model
    held = config.get(block) if isinstance(config.get(block), Mapping) else {}
    assert isinstance(held, Mapping)
    params: dict[str, Any] = {name: w.value for name, w in target.get(block, {}).items()}
    for name, info in model.model_fields.items():
        if name not in params and _always_sent(info) and held.get(name) is not None:
            params[name] = held[name]
    if command_problems(command, params):
        # The tracker's mode needs more (FRI mode 5: interval and mileage): its own values for those.
        params.update({name: held[name] for name in model.model_fields
                       if name not in params and held.get(name) is not None})
    if command_problems(command, params):  # its own values do not fit: the profile's alone
        params = {name: w.value for name, w in target.get(block, {}).items()}
    return command, params


def describe(block: str, differs: Mapping[str, tuple[Any, Any]]) -> str:
    """`fri.send_interval_s 60 -> 30, ...`, secrets hidden."""
    def text(value: Any) -> str:
        return "(unknown)" if value is None else repr(value)
    return ", ".join(f"{block}.{name} {text(shown(block, name, actual))} -> {text(shown(block, name, wanted))}"
                     for name, (wanted, actual) in differs.items())
