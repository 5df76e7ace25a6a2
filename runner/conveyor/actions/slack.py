"""slack.send: post a message to a Slack incoming webhook (URL from a slack connection).

input: the Slack message, e.g. {"text": "...", "blocks": [...]} (text or blocks required).
output: {"status", "body"}.
"""

from __future__ import annotations

import json
from typing import Any

from conveyor.actions import http
from conveyor.actions.base import ActionRequest, Environment, InvalidInput


def send(request: ActionRequest, env: Environment) -> dict[str, Any]:
    connection = request.require_connection("slack")
    if not request.input.get("text") and not request.input.get("blocks"):
        raise InvalidInput("input.text or input.blocks is required")
    response = http.send(
        env,
        "POST",
        str(connection.secret["webhook_url"]),
        timeout_s=request.timeout_s,
        headers={"Content-Type": "application/json"},
        content=json.dumps(request.input, ensure_ascii=False).encode(),
        credentials=connection,
    )
    return {"status": response["status"], "body": response["body"]}
