"""`conveyor executions show` of a fan-out: the children under their parent step, and a
child naming its parent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FAN_OUT = {
    "slug": "order-lines",
    "name": "Order lines",
    "trigger": {"manual": True},
    "steps": [
        {
            "id": "each",
            "for_each": {
                "items": "{{trigger.payload.lines}}",
                "steps": [{"id": "reserve", "set": {"sku": "{{item.sku}}"}}],
            },
        },
        {
            "id": "tell",
            "parallel": {
                "branches": {
                    "warehouse": [{"id": "pick", "delay": {"for": "1d"}}],
                    "customer": [{"id": "mail", "set": {"sent": True}}],
                }
            },
        },
    ],
}


def test_show_lists_the_children_under_their_steps(cli: Any, tmp_path: Path) -> None:
    (tmp_path / "f.json").write_text(json.dumps(FAN_OUT))
    (tmp_path / "data.json").write_text(json.dumps({"lines": [{"sku": "a"}, {"sku": "b"}]}))
    assert cli("workflows", "apply", "-f", str(tmp_path / "f.json")).exit_code == 0
    started = json.loads(
        cli("trigger", "order-lines", "--data", str(tmp_path / "data.json"), "--json").output
    )
    parent = started["execution_id"]
    shown = json.loads(cli("executions", "show", str(parent), "--json").output)
    assert shown["execution"]["status"] == "waiting" and shown["execution"]["wait_kind"] == "children"
    assert [(c["step"], c["label"], c["status"]) for c in shown["children"]] == [
        ("each", "item 0", "completed"),
        ("each", "item 1", "completed"),
        ("tell", "customer", "completed"),
        ("tell", "warehouse", "waiting"),
    ]
    text = cli("executions", "show", str(parent)).output
    assert "children (by fan-out step" in text and "warehouse" in text and "item 1" in text
    child = shown["children"][3]["execution_id"]
    child_text = cli("executions", "show", str(child)).output
    assert f"of execution {parent}" in child_text and '"branch": "warehouse"' in child_text
