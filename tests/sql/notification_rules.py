"""An independent reference of the notification preference rules (docs/notifications.md#preferences),
in Python with zoneinfo, for the property tests of conveyor.resolve_notification_channels:
written from the documented rules, not from the SQL."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

DEFAULTS: dict[str, Any] = {
    "channels": ["in_app", "email"],
    "frequency": "immediate",
    "quiet_hours": None,
    "dnd_until": None,
    "email_unsubscribed": False,
    "digest": {"time": "08:00", "day": "monday"},
}
WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]


def wall(value: datetime, zone: str) -> datetime:
    """The local wall-clock time (naive) of an instant in a zone. (Through UTC: astimezone
    to the zone a value already has returns it unchanged, even inside a gap.)"""
    return value.astimezone(UTC).astimezone(ZoneInfo(zone)).replace(tzinfo=None)


def local_to_instant(local: datetime, zone: str) -> datetime:
    """A wall-clock time as an instant: its first occurrence when it happens twice, the
    first minute after the gap when it does not exist."""
    tz = ZoneInfo(zone)
    exists = [
        candidate.astimezone(UTC)
        for candidate in (local.replace(tzinfo=tz, fold=0), local.replace(tzinfo=tz, fold=1))
        if wall(candidate, zone) == local
    ]
    if exists:
        return min(exists)
    probe = local
    for _ in range(180):
        probe += timedelta(minutes=1)
        candidate = probe.replace(tzinfo=tz)
        if wall(candidate, zone) == probe:
            return candidate.astimezone(UTC)
    raise AssertionError(f"no local time after {local} exists in {zone}")


def hhmm(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


def next_digest_at(frequency: str, digest: dict[str, Any], zone: str, now: datetime) -> datetime:
    local = now.astimezone(ZoneInfo(zone))
    if frequency == "hourly_digest":
        offset = local.utcoffset()
        assert offset is not None
        start = local.replace(tzinfo=None, minute=0, second=0, microsecond=0)
        return (start - offset).replace(tzinfo=UTC) + timedelta(hours=1)
    at_time = hhmm(digest.get("time", "08:00"))
    day = WEEKDAYS.index(digest.get("day", "monday")) + 1
    today: date = local.date()
    for offset_days in range(9):
        day_of = today + timedelta(days=offset_days)
        if frequency == "weekly_digest" and day_of.isoweekday() != day:
            continue
        candidate = local_to_instant(datetime.combine(day_of, at_time), zone)
        if candidate > now:
            return candidate
    raise AssertionError("no digest time within 9 days")


def in_quiet(quiet: dict[str, Any], at: time) -> bool:
    start, end = hhmm(quiet["start"]), hhmm(quiet["end"])
    if start < end:
        return start <= at < end
    return at >= start or at < end


def quiet_release(quiet: dict[str, Any] | None, zone: str, at: datetime) -> datetime:
    if quiet is None:
        return at
    local = wall(at, zone)
    if not in_quiet(quiet, local.time()):
        return at
    end = hhmm(quiet["end"])
    day_of = local.date() if local.time() < end else local.date() + timedelta(days=1)
    return local_to_instant(datetime.combine(day_of, end), zone)


def resolve(prefs: dict[str, Any], priority: str, zone: str, now: datetime) -> dict[str, tuple[str, Any]]:
    """Per channel: ("send", None), ("hold", until), ("digest", due_at) or ("drop", None)."""
    p = DEFAULTS | {k: v for k, v in prefs.items() if v is not None}
    digest = DEFAULTS["digest"] | (p.get("digest") or {})
    quiet = p["quiet_hours"]
    dnd = datetime.fromisoformat(p["dnd_until"]) if p["dnd_until"] else None
    out: dict[str, tuple[str, Any]] = {}
    for channel in ("in_app", "email", "sms"):
        if (
            channel not in p["channels"]
            or p["frequency"] == "never"
            or (channel == "email" and p["email_unsubscribed"])
        ):
            out[channel] = ("drop", None)
        elif channel == "in_app" or priority == "critical":
            out[channel] = ("send", None)
        elif p["frequency"].endswith("_digest"):
            out[channel] = (
                ("drop", None)
                if channel == "sms"
                else ("digest", next_digest_at(p["frequency"], digest, zone, now))
            )
        else:
            until = max(now, dnd) if dnd is not None else now
            until = quiet_release(quiet, (quiet or {}).get("timezone") or zone, until)
            if until <= now:
                out[channel] = ("send", None)
            elif (quiet or {}).get("action", "hold") == "drop":
                out[channel] = ("drop", None)
            else:
                out[channel] = ("hold", until)
    return out
