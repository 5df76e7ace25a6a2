"""discord.send: post a message to a Discord webhook (URL from a discord connection).

input: {"text" (sent as Discord's "content"), "username", "avatar_url", "embeds"}; Discord's
own field names ("content", ...) are passed through too. Text or embeds required.
output: {"status", "body"}.
"""

from __future__ import annotations

import json
from typing import Any

from conveyor.actions import http
from conveyor.actions.base import ActionRequest, Environment, InvalidInput


def send(request: ActionRequest, env: Environment) -> dict[str, Any]:
    connection = request.require_connection("discord")
    payload = dict(request.input)
    text = payload.pop("text", None)
    if text is not None and not payload.get("content"):
        payload["content"] = text
    if not payload.get("content") and not payload.get("embeds"):
        raise InvalidInput("input.text or input.embeds is required")
    response = http.send(
        env,
        "POST",
        str(connection.secret["webhook_url"]),
        timeout_s=request.timeout_s,
        headers={"Content-Type": "application/json"},
        content=json.dumps(payload, ensure_ascii=False).encode(),
        credentials=connection,
    )
    return {"status": response["status"], "body": response["body"]}
