"""The action registry: an action type (`webhook.send`) maps to one function.

`perform` runs one action and turns every way it can end into an `Outcome`; secrets of
the connection the action used (in every form `secrets.secret_forms` knows) and
credential-named query parameters are redacted from the output and the error before
the outcome leaves this function.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import Any

from conveyor.actions import discord, email, slack, sms, webhook
from conveyor.actions.base import ActionError, ActionRequest, Environment, InvalidInput, Outcome
from conveyor.secrets import QUERY_TOKENS

Action = Callable[[ActionRequest, Environment], dict[str, Any]]

REGISTRY: dict[str, Action] = {
    "webhook.send": webhook.send,
    "email.send": email.send,
    "slack.send": slack.send,
    "discord.send": discord.send,
    "sms.send": sms.send,
}

log = logging.getLogger("conveyor.actions")

__all__ = ["REGISTRY", "ActionError", "ActionRequest", "Environment", "InvalidInput", "Outcome", "perform"]


def perform(request: ActionRequest, env: Environment) -> Outcome:
    # With a connection, every form of its secrets is redacted from the output and the
    # error; without one the output is the tenant's own data, passed on as it came, and
    # only the error (a message that may quote a URL) has its query tokens masked.
    redactor = request.connection.redactor if request.connection is not None else None
    errors = redactor or QUERY_TOKENS
    action = REGISTRY.get(request.action)
    try:
        if action is None:
            raise InvalidInput(
                f"unknown action {request.action!r}; this runner performs {', '.join(sorted(REGISTRY))}"
            )
        if not isinstance(request.input, dict):
            raise InvalidInput("the action's input must be a JSON object")
        output = action(request, env)
        return Outcome(ok=True, output=redactor(output) if redactor is not None else output)
    except ActionError as exc:
        return Outcome(
            ok=False,
            output=redactor(exc.output) if redactor is not None else exc.output,
            retryable=exc.retryable,
            retry_after_s=exc.retry_after_s,
            error=errors(exc.as_error()),
        )
    except Exception as exc:  # a bug in an action: report it, never crash the runner
        # the traceback is logged as redacted text: the exception's message may quote a secret
        trace = errors.text("".join(traceback.format_exception(exc)))
        log.error("action raised unexpectedly", extra={"action": request.action, "error": trace})
        return Outcome(
            ok=False,
            output=None,
            retryable=True,
            error=errors({"message": f"{type(exc).__name__}: {exc}", "type": "internal"}),
        )
