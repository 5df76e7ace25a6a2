"""Options every command shares and the one way errors reach the person at the terminal."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
import psycopg
import yaml

from conveyor.db import describe_db_error
from conveyor.errors import ConveyorError

F = TypeVar("F", bound=Callable[..., Any])


def fail_cleanly(func: F) -> F:
    """A ConveyorError or database error becomes `error: ...` on stderr and exit status 1."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConveyorError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except psycopg.Error as exc:
            click.echo(f"error: {describe_db_error(exc)}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def database_option(func: F) -> F:
    return click.option(
        "--database-url",
        envvar="CONVEYOR_DATABASE_URL",
        help="The database [env CONVEYOR_DATABASE_URL]; default: the embedded cluster.",
    )(func)


def tenant_option(func: F) -> F:
    """`--tenant`, which must name a tenant that exists: an unknown one is an error, never
    an empty answer (checked before the command runs, once per invocation)."""

    @wraps(func)
    def checked(*args: Any, **kwargs: Any) -> Any:
        check_tenant_exists(kwargs.get("tenant"), kwargs.get("database_url"))
        return func(*args, **kwargs)

    return click.option(
        "--tenant", "-t", envvar="CONVEYOR_TENANT", required=True, help="The tenant [env CONVEYOR_TENANT]."
    )(checked)  # type: ignore[return-value]


def check_tenant_exists(tenant: str | None, database_url: str | None) -> None:
    from conveyor.db import connect

    try:
        with connect(database_url) as conn:
            known = conn.execute("select 1 from conveyor.tenants where tenant_id = %s", (tenant,)).fetchone()
    except ConveyorError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except psycopg.Error as exc:
        click.echo(f"error: {describe_db_error(exc)}", err=True)
        sys.exit(1)
    if known is None:
        click.echo(
            f'error: tenant "{tenant}" does not exist (see `conveyor tenants list`; create it with'
            " `conveyor tenants add`)",
            err=True,
        )
        sys.exit(1)


# `--since`: a whole number and a unit, as `30m`, `24h`, `7d`, `2w` or `2 hours`, `7 days`.
_SINCE = re.compile(r"^\s*(\d{1,6})\s*([a-z]+)\s*$")
_SINCE_UNITS = {
    "minutes": ("m", "min", "mins", "minute", "minutes"),
    "hours": ("h", "hr", "hrs", "hour", "hours"),
    "days": ("d", "day", "days"),
    "weeks": ("w", "week", "weeks"),
}


def parse_since(value: str, option: str = "--since") -> str:
    """The PostgreSQL interval text for a `--since` value, or a ConveyorError naming the
    option and the forms it accepts."""
    match = _SINCE.match(value.lower())
    if match:
        for unit, spellings in _SINCE_UNITS.items():
            if match[2] in spellings:
                return f"{int(match[1])} {unit}"
    raise ConveyorError(
        f"{option} {value!r} is not a period: use a whole number and a unit, as 30m, 24h, 7d, 2w"
        " or '2 hours', '7 days' (minutes, hours, days, weeks)"
    )


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(func)


# Bounds on a file the CLI reads before PyYAML sees it: its composer and json.dumps recurse
# once per nesting level (a few hundred levels end in RecursionError), and aliases can
# expand a small file into billions of values. The engine has its own, tighter limits
# (conveyor.max_document_bytes and max_document_depth, 256 KB and 32); these are higher
# so that within them its messages, which name the path, are the ones people see.
MAX_DOCUMENT_BYTES = 1_048_576
MAX_DOCUMENT_DEPTH = 64


def _limit(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ConveyorError(f"{name}={value!r} is not a whole number") from exc


def check_structure(text: str, where: str, max_depth: int, max_values: int) -> None:
    """Raise a ConveyorError when the YAML (or JSON) text nests deeper than max_depth or
    expands, aliases included, to more than max_values values. One pass over PyYAML's
    event stream, whose parser keeps its own stack (no recursion); an alias counts as the
    size and depth of what its anchor marks, without expanding it."""
    anchors: dict[str, tuple[int, int]] = {}  # anchor -> (values, depth) of its node
    open_nodes: list[tuple[str | None, int, int]] = []  # (anchor, values before it, deepest inside)
    values = 0
    try:
        for event in yaml.parse(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
            reached = len(open_nodes)
            if isinstance(event, yaml.CollectionStartEvent):
                values += 1
                reached += 1
                open_nodes.append((event.anchor, values - 1, reached))
            elif isinstance(event, yaml.CollectionEndEvent):
                anchor, before, deepest = open_nodes.pop()
                if anchor is not None:
                    anchors[anchor] = (values - before, deepest - len(open_nodes))
                reached = deepest
            elif isinstance(event, yaml.ScalarEvent):
                values += 1
                if event.anchor is not None:
                    anchors[event.anchor] = (1, 0)
            elif isinstance(event, yaml.AliasEvent):
                if event.anchor not in anchors:  # undefined, or inside the node it names
                    raise ConveyorError(
                        f"{where}: {_line(event)}alias *{event.anchor} names no complete node before it"
                    )
                size, depth = anchors[event.anchor]
                values += size
                reached += depth
            else:
                continue
            if open_nodes:
                anchor, before, deepest = open_nodes[-1]
                open_nodes[-1] = (anchor, before, max(deepest, reached))
            line = _line(event)
            if reached > max_depth:
                raise ConveyorError(
                    f"{where}: {line}nesting depth {reached} exceeds the limit {max_depth} (CONVEYOR_MAX_DOCUMENT_DEPTH)"
                )
            if values > max_values:
                raise ConveyorError(
                    f"{where}: {line}the document expands to more than {max_values} values "
                    "(aliases included; limit CONVEYOR_MAX_DOCUMENT_BYTES)"
                )
    except yaml.YAMLError as exc:
        raise ConveyorError(f"{where}: not valid YAML or JSON: {exc}") from exc


def _line(event: yaml.Event) -> str:
    return f"line {event.start_mark.line + 1}: " if event.start_mark is not None else ""


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def load_text(text: str, where: str) -> Any:
    """The value of a YAML or JSON text, refused (one line naming `where` and the limit)
    when it is too deep or too large to load safely."""
    max_bytes = _limit("CONVEYOR_MAX_DOCUMENT_BYTES", MAX_DOCUMENT_BYTES)
    size = len(text.encode())
    if size > max_bytes:
        raise ConveyorError(
            f"{where}: {size} bytes exceeds the limit {max_bytes} (CONVEYOR_MAX_DOCUMENT_BYTES)"
        )
    check_structure(text, where, _limit("CONVEYOR_MAX_DOCUMENT_DEPTH", MAX_DOCUMENT_DEPTH), max_bytes)
    # JSON text is read as JSON (PyYAML's pure-Python loader took 14 s for a 1 MB document
    # of small steps, its C one 6 s, json 0.06 s); anything else as YAML, by the C loader
    # where PyYAML has it. NaN and Infinity are not JSON: they are left to YAML, as before.
    try:
        return json.loads(text, parse_constant=_not_json)
    except ValueError:
        pass
    try:
        return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise ConveyorError(f"{where}: not valid YAML or JSON: {exc}") from exc


def read_document(path: Path) -> dict[str, Any]:
    """A workflow or event document from a YAML or JSON file (YAML is a superset of JSON)."""
    max_bytes = _limit("CONVEYOR_MAX_DOCUMENT_BYTES", MAX_DOCUMENT_BYTES)
    try:
        with path.open("rb") as file:
            raw = file.read(max_bytes + 1)
            size = max(len(raw), os.fstat(file.fileno()).st_size)
    except OSError as exc:
        raise ConveyorError(f"{path}: {exc.strerror}") from exc
    if size > max_bytes:
        raise ConveyorError(
            f"{path}: {size} bytes exceeds the limit {max_bytes} (CONVEYOR_MAX_DOCUMENT_BYTES)"
        )
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        raise ConveyorError(f"{path}: not valid UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    data = load_text(text, str(path))
    if not isinstance(data, dict):
        raise ConveyorError(f"{path}: the document must be a mapping (an object), not {type(data).__name__}")
    # Round-trip through JSON so YAML-only types (dates) arrive as the strings SQL expects.
    return json.loads(json.dumps(data, default=str))  # type: ignore[no-any-return]


def load_json_option(text: str, what: str) -> Any:
    """A JSON value given on the command line; a value nested too deeply for Python's
    decoder (which recurses) is one line naming the option, not a traceback."""
    try:
        return json.loads(text)
    except RecursionError as exc:
        raise ConveyorError(f"{what} is nested too deeply to read") from exc
    except ValueError as exc:
        raise ConveyorError(f"{what} is not valid JSON: {exc}") from exc
