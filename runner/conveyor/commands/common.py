"""Options every command shares and the one way errors reach the person at the terminal."""

from __future__ import annotations

import json
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
    return click.option(
        "--tenant", "-t", envvar="CONVEYOR_TENANT", required=True, help="The tenant [env CONVEYOR_TENANT]."
    )(func)


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(func)


def read_document(path: Path) -> dict[str, Any]:
    """A workflow or event document from a YAML or JSON file (YAML is a superset of JSON)."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConveyorError(f"{path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConveyorError(f"{path}: not valid YAML or JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConveyorError(f"{path}: the document must be a mapping (an object), not {type(data).__name__}")
    # Round-trip through JSON so YAML-only types (dates) arrive as the strings SQL expects.
    return json.loads(json.dumps(data, default=str))  # type: ignore[no-any-return]
