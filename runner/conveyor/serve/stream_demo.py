"""`GET /demo/notifications`: a page that shows a user's notification stream, live.

For trying the stream from a browser and as an example of the client side: open
`/demo/notifications#token=<a user token>` (the token is in the fragment, which the
browser never sends, so it stays out of access logs). The page opens an `EventSource` on
`/api/notifications/stream?access_token=...` and lists each notification as it arrives,
exactly as sent (it drops no duplicate, so the browser test sees what the server sent).
EventSource reconnects by itself with `Last-Event-ID`; should the browser give up (it does
when the server answers an error), the page reopens the stream after the last id it has.
No data is put into the page as HTML: text only.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Conveyor notifications</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2rem; max-width: 40rem; }
#status { color: #555; } li { margin: .3rem 0; } .unread { font-weight: 600; }
</style>
</head>
<body>
<h1>Notifications</h1>
<p>Status: <span id="status">connecting</span>, unread: <span id="unread">?</span></p>
<ul id="notifications"></ul>
<script>
"use strict";
const token = new URLSearchParams(location.hash.slice(1)).get("token") || "";
const list = document.getElementById("notifications");
const status = document.getElementById("status");
const unread = document.getElementById("unread");
let lastId = null;
let source = null;

function open() {
  const params = new URLSearchParams({access_token: token});
  if (lastId !== null) params.set("last_event_id", lastId);
  source = new EventSource("/api/notifications/stream?" + params);
  source.onopen = () => { status.textContent = "open"; };
  source.addEventListener("ready", (e) => {
    const data = JSON.parse(e.data);
    lastId = e.lastEventId; unread.textContent = data.unread_count;
  });
  source.addEventListener("truncated", (e) => {
    lastId = e.lastEventId; status.textContent = "truncated: list the rest over HTTP";
  });
  source.onmessage = (e) => {
    const n = JSON.parse(e.data);
    lastId = e.lastEventId;
    const item = document.createElement("li");
    item.dataset.id = String(n.id);
    item.className = n.read_at ? "read" : "unread";
    item.textContent = n.title + (n.message ? " — " + n.message : "");
    list.prepend(item);
    unread.textContent = n.unread_count;
  };
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      status.textContent = "closed; reopening";
      setTimeout(open, 1000);
    } else {
      status.textContent = "reconnecting";
    }
  };
}
open();
</script>
</body>
</html>
"""


async def demo_page(request: Request) -> Response:
    return HTMLResponse(PAGE, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})
