"""The web console of `conveyor serve` (docs/console.md) and GET /api/executions/<id>."""

from __future__ import annotations

from pathlib import Path

from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from conveyor.serve.console import campaigns, pages
from conveyor.serve.console.api import execution_json
from conveyor.serve.console.live import execution_live

CONSOLE_ROUTES = [
    Route("/console/login", pages.login_form, methods=["GET"]),
    Route("/console/login", pages.login, methods=["POST"]),
    Route("/console/logout", pages.logout, methods=["POST", "GET"]),
    Route("/console", pages.console_page(pages.workflows), methods=["GET"]),
    Route("/console/executions", pages.console_page(pages.executions), methods=["GET"]),
    Route("/console/executions/{id:int}", pages.console_page(pages.execution), methods=["GET"]),
    Route("/console/executions/{id:int}/live", execution_live, methods=["GET"]),
    Route("/console/events", pages.console_page(pages.events), methods=["GET"]),
    Route("/console/dead-letters", pages.console_page(pages.dead_letters), methods=["GET"]),
    Route("/console/dead-letters/{id:int}/requeue", pages.console_page(pages.requeue), methods=["POST"]),
    Route("/console/approvals", pages.console_page(pages.approvals), methods=["GET"]),
    Route("/console/campaigns", pages.console_page(campaigns.campaigns), methods=["GET"]),
    Route("/console/campaigns/{slug}", pages.console_page(campaigns.campaign), methods=["GET"]),
    Mount("/console/static", StaticFiles(directory=Path(__file__).parent / "static"), name="console-static"),
    Route("/api/executions/{id:int}", execution_json, methods=["GET"]),
]
