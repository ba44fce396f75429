"""``aimsnap run --http HOST:PORT``: the live status page for an operator, and its data.

- ``/``: one self-contained page (no CDN, no external resource) that fetches ``/api/status``
  every 2 s and redraws: every policy with its state (ok, breached, failing), RPO against its
  objective, last run, next fire and newest recovery point; every AIM set with state, lag and
  queued bytes; open alerts; the last failures with their reasons.
- ``/api/status`` (what ``status --json`` says, with the AIM sets), ``/metrics``, ``/healthz``.
Read-only. With a token, every request needs ``Authorization: Bearer TOKEN`` or ``?token=TOKEN``
(the page passes its own on to the API)."""

from __future__ import annotations

import hmac
import json
import logging
import threading
import urllib.parse
from collections.abc import Callable
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .metrics import registry
from .status import service_alive, status
from .store import Store

log = logging.getLogger("aimsnap.statuspage")

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>aimsnap status</title>
<style>
body{font-family:sans-serif;margin:1.5em;background:#fafafa;color:#222}
h1{margin:0 0 .2em}h2{margin:1.2em 0 .4em;font-size:1.15em}
table{border-collapse:collapse;background:#fff;min-width:60%}td,th{padding:4px 12px;text-align:left;
border-bottom:1px solid #ddd;white-space:nowrap}th{background:#eee}
.ok,.replicating{color:#1b5e20}.breached,.failing,.error,.fenced,.stalled,.failed,.timeout{color:#b71c1c;font-weight:bold}
.disconnected,.resyncing,.paused{color:#e65100}td.why{white-space:normal;max-width:28em}
tr.breached td,tr.failing td{background:#ffebee}.muted{color:#777}#when{color:#777}
</style></head><body>
<h1>aimsnap</h1><div id="when">loading…</div>
<h2>Policies</h2><table id="policies"><thead><tr><th>policy</th><th>state</th><th>RPO s / objective</th>
<th>last run</th><th>at</th><th>next fire</th><th>newest recovery point</th><th>why</th></tr></thead><tbody></tbody></table>
<h2>AIM sets</h2><table id="aim_sets"><thead><tr><th>node</th><th>AIM set</th><th>role</th><th>state</th>
<th>lag s</th><th>queued bytes</th><th>last error</th></tr></thead><tbody></tbody></table>
<h2>Open alerts</h2><table id="alerts"><thead><tr><th>rule</th><th>since</th><th>reason</th></tr></thead>
<tbody></tbody></table>
<h2>Last failures</h2><table id="failures"><thead><tr><th>policy</th><th>at</th><th>why</th></tr></thead>
<tbody></tbody></table>
<script>
const query = location.search;
function cell(v){const td=document.createElement("td");td.textContent=(v===null||v===undefined||v==="")?"-":v;return td;}
function fill(id, rows, cells, rowClass){
  const body=document.querySelector("#"+id+" tbody"); body.replaceChildren();
  if(!rows.length){const tr=document.createElement("tr");const td=cell("none");td.className="muted";
    td.colSpan=document.querySelectorAll("#"+id+" th").length;tr.appendChild(td);body.appendChild(tr);return;}
  for(const r of rows){const tr=document.createElement("tr");if(rowClass)tr.className=rowClass(r);
    tr.dataset.key=r.policy||r.aim_set||r.key||"";for(const c of cells(r)){tr.appendChild(c);}body.appendChild(tr);}
}
function state(text){const td=cell(text);td.className=text;return td;}
function when(v){if(!v)return cell(v);const d=new Date(v);const td=cell(d.toLocaleTimeString());td.title=v;return td;}
function why(v){const td=cell(v);td.className="why";return td;}
async function refresh(){
  try{
    const r=await fetch("/api/status"+query,{cache:"no-store"}); const s=await r.json();
    document.getElementById("when").textContent="orchestrator "+s.orchestrator+" · "+new Date(s.at).toLocaleString();
    fill("policies", s.policies, p=>[cell(p.policy), state(p.state),
      cell(p.rpo_objective_seconds ? (p.rpo_seconds??"-")+" / "+p.rpo_objective_seconds : p.rpo_seconds),
      state(p.last_status), when(p.last_started_at), when(p.next_fire), cell(p.recovery_point), why(p.last_error)],
      p=>p.state);
    fill("aim_sets", s.aim_sets||[], a=>[cell(a.node), cell(a.aim_set), cell(a.role),
      state(a.stalled ? "stalled" : a.state), cell(a.lag_seconds), cell(a.queued_bytes), why(a.last_error)]);
    fill("alerts", s.alerts, a=>[state(a.rule), when(a.fired_at), why(a.reason)]);
    fill("failures", s.failures, f=>[cell(f.policy), when(f.at), why(f.error)]);
  }catch(e){document.getElementById("when").textContent="cannot reach the orchestrator: "+e;}
}
refresh(); setInterval(refresh, 2000);
</script></body></html>"""


class StatusPage:
    def __init__(self, addr: str, store: Store, watchdog, token: str | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        host, _, port = addr.rpartition(":")
        page = self
        self.store, self.watchdog, self.token, self.clock = Store(store.path), watchdog, token, clock
        self.registry = registry(store, watchdog)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                try:
                    page.answer(self)
                except Exception as e:  # noqa: BLE001 - said to the browser and the log, the page serves on
                    log.exception("status page: %s failed", self.path)
                    _send(self, 500, "text/plain", f"internal error: {e}\n".encode())

            def log_message(self, *args) -> None:
                pass
        self.server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
        self.address = f"{self.server.server_address[0]}:{self.server.server_address[1]}"

    def start(self) -> None:
        threading.Thread(target=self.server.serve_forever, name="status-page", daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _allowed(self, h: BaseHTTPRequestHandler, query: dict) -> bool:
        if not self.token:
            return True
        given = h.headers.get("Authorization", "").removeprefix("Bearer ") or (query.get("token") or [""])[0]
        return hmac.compare_digest(given.encode(), self.token.encode())

    def answer(self, h: BaseHTTPRequestHandler) -> None:
        url = urllib.parse.urlsplit(h.path)
        query = urllib.parse.parse_qs(url.query)
        if not self._allowed(h, query):
            return _send(h, 401, "text/plain", b"a bearer token is needed (Authorization header or ?token=)\n")
        now = self.clock()
        if url.path == "/":
            return _send(h, 200, "text/html; charset=utf-8", PAGE.encode())
        if url.path == "/api/status":
            body = status(self.store, now, self.watchdog.last_seen() if self.watchdog else [])
            return _send(h, 200, "application/json", json.dumps(body, default=str).encode())
        if url.path == "/metrics":
            return _send(h, 200, CONTENT_TYPE_LATEST, generate_latest(self.registry))
        if url.path == "/healthz":
            alive = service_alive(self.store, now)
            return _send(h, 200 if alive else 503, "text/plain", b"ok\n" if alive else b"no heartbeat\n")
        return _send(h, 404, "text/plain", b"not found\n")


def _send(h: BaseHTTPRequestHandler, code: int, ctype: str, body: bytes) -> None:
    h.send_response(code)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(body)))
    h.send_header("Cache-Control", "no-store")
    h.end_headers()
    h.wfile.write(body)
