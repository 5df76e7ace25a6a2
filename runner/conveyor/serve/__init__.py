"""`conveyor serve`: the inbound HTTP server, a thin shell over SQL functions.

One concern per module: `app` (the routes), `protocol` and `guard` (what a hostile client
meets before a route), `bodies` (JSON checks), `hub` (one LISTEN connection fanned out to
subscribers), `tokens` (the platform's signed user tokens), `server` (lifecycle).
"""

from conveyor.serve.limits import Limits
from conveyor.serve.server import ServeSettings, run, serve_in_thread

__all__ = ["Limits", "ServeSettings", "run", "serve_in_thread"]
