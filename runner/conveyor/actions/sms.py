"""sms.send: a Twilio-compatible SMS API call.

POST {base_url}/2010-04-01/Accounts/{account_sid}/Messages.json, form-encoded
(To, From, Body), HTTP basic auth (account_sid, auth_token), with the idempotency key in
`I-Twilio-Idempotency-Token`. base_url comes from the twilio connection (default
https://api.twilio.com), so any compatible provider (or a local test server) works.
input: {"to", "body", "from" (default: the connection's config.from)}.
output: {"sid", "status", "to", "from"} from the provider's answer.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from conveyor.actions import http
from conveyor.actions.base import ActionError, ActionRequest, Environment, InvalidInput, text_field
from conveyor.connections import TWILIO_BASE_URL

DEFAULT_BASE_URL = TWILIO_BASE_URL


def send(request: ActionRequest, env: Environment) -> dict[str, Any]:
    connection = request.require_connection("twilio")
    to = text_field(request.input, "to", required=True)
    body = text_field(request.input, "body", required=True)
    sender = text_field(request.input, "from") or connection.config.get("from")
    if not sender:
        raise InvalidInput("input.from is required (or config.from on the twilio connection)")
    sid = str(connection.config["account_sid"])
    base_url = str(connection.config.get("base_url") or DEFAULT_BASE_URL).rstrip("/")
    url = f"{base_url}/2010-04-01/Accounts/{quote(sid, safe='')}/Messages.json"
    response = http.send(
        env,
        "POST",
        url,
        timeout_s=request.timeout_s,
        headers={"I-Twilio-Idempotency-Token": request.idempotency_key},
        data={"To": to, "From": str(sender), "Body": body},
        auth=(sid, str(connection.secret["auth_token"])),
        credentials=connection,
    )
    answer = response["body"] if isinstance(response["body"], dict) else {}
    if not answer.get("sid"):
        raise ActionError(
            "the SMS provider's answer has no message sid",
            retryable=False,
            kind="unexpected_response",
            output=response,
        )
    return {
        "sid": answer["sid"],
        "status": answer.get("status"),
        "to": answer.get("to", to),
        "from": answer.get("from", sender),
    }
