"""The runner's metrics (Prometheus text format) and health, on an optional HTTP port.

`CONVEYOR_METRICS_ADDRESS=127.0.0.1:9464` (or `--metrics-address`) serves
* `GET /metrics` — counters of actions by type and outcome, their total duration,
  write-back outcomes, in-flight actions, database connectivity;
* `GET /healthz` — 200 while the runner is connected to its database and its loop is
  alive (the last loop pass is recent), 503 otherwise (for a liveness/readiness probe).
Off by default.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from conveyor.errors import ConveyorError


class Metrics:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.actions: dict[tuple[str, str], int] = defaultdict(int)
        self.duration_s: dict[str, float] = defaultdict(float)
        self.write_backs: dict[str, int] = defaultdict(int)
        self.inflight = 0
        self.connected = False
        self.last_loop = 0.0  # monotonic time of the last pass of the runner's loop

    def action_done(self, action: str, outcome: str, duration_s: float) -> None:
        with self.lock:
            self.actions[(action, outcome)] += 1
            self.duration_s[action] += duration_s

    def written(self, outcome: str, count: int = 1) -> None:
        with self.lock:
            self.write_backs[outcome] += count

    def healthy(self, stale_after_s: float) -> bool:
        with self.lock:
            return self.connected and time.monotonic() - self.last_loop < stale_after_s

    def render(self) -> str:
        with self.lock:
            lines = [
                "# HELP conveyor_runner_actions_total Actions performed, by type and outcome.",
                "# TYPE conveyor_runner_actions_total counter",
            ]
            for (action, outcome), count in sorted(self.actions.items()):
                lines.append(
                    f"conveyor_runner_actions_total{{action={_q(action)},outcome={_q(outcome)}}} {count}"
                )
            lines += [
                "# HELP conveyor_runner_action_seconds_total Time spent performing actions, by type.",
                "# TYPE conveyor_runner_action_seconds_total counter",
            ]
            for action, seconds in sorted(self.duration_s.items()):
                lines.append(f"conveyor_runner_action_seconds_total{{action={_q(action)}}} {seconds:.6f}")
            lines += [
                "# HELP conveyor_runner_write_backs_total Results written back, by the database's verdict.",
                "# TYPE conveyor_runner_write_backs_total counter",
            ]
            for outcome, count in sorted(self.write_backs.items()):
                lines.append(f"conveyor_runner_write_backs_total{{outcome={_q(outcome)}}} {count}")
            lines += [
                "# HELP conveyor_runner_inflight Actions being performed now.",
                "# TYPE conveyor_runner_inflight gauge",
                f"conveyor_runner_inflight {self.inflight}",
                "# HELP conveyor_runner_database_connected 1 while the runner is connected to its database.",
                "# TYPE conveyor_runner_database_connected gauge",
                f"conveyor_runner_database_connected {int(self.connected)}",
            ]
        return "\n".join(lines) + "\n"


def _q(value: str) -> str:
    return json.dumps(value)  # a quoted, escaped label value


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ConveyorError(f"CONVEYOR_METRICS_ADDRESS: expected host:port, not {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


class MetricsServer:
    def __init__(self, metrics: Metrics, address: str, stale_after_s: float) -> None:
        host, port = parse_address(address)
        self.metrics = metrics

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self._reply(200, metrics.render(), "text/plain; version=0.0.4")
                elif self.path == "/healthz":
                    ok = metrics.healthy(stale_after_s)
                    self._reply(200 if ok else 503, "ok\n" if ok else "unhealthy\n", "text/plain")
                else:
                    self._reply(404, "not found\n", "text/plain")

            def _reply(self, status: int, body: str, content_type: str) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        try:
            self.httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise ConveyorError(f"cannot serve metrics on {address}: {exc}") from exc
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="conveyor-metrics", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
