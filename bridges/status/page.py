"""The status page's HTML: one self-contained document, no build step. I/O-free.

The data of the moment is embedded in the page (so it shows without scripts running late,
and a headless browser's first DOM has it); a little inline script renders it and then
fetches ``status.json`` every ``REFRESH_MS`` to re-render. Every value reaches the DOM
through ``textContent``, never as markup.
"""

from __future__ import annotations

from typing import Any

import orjson

REFRESH_MS = 2000

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Inferoxy status</title>
<style>
 body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1d2330; background: #f6f7f9; }
 h1 { font-size: 1.3em; margin: 0 0 .2em; }
 #server { margin-bottom: 1em; color: #4a5263; }
 .model { background: #fff; border: 1px solid #d8dce3; border-radius: 6px; padding: .7em 1em;
          margin-bottom: .8em; }
 .model h2 { font-size: 1.05em; margin: 0 0 .4em; }
 .badge { display: inline-block; padding: 0 .5em; border-radius: 3px; font-size: .85em;
          font-weight: 600; margin-left: .4em; }
 .READY, .ready { background: #d9f2e1; color: #17603a; }
 .LOADING, .starting, .stopping { background: #fdf0d2; color: #7a5500; }
 .UNAVAILABLE, .dead, .stopped, .crash-loop { background: #fbdcdc; color: #8a1c1c; }
 table { border-collapse: collapse; margin: .3em 0; }
 td, th { padding: .15em .8em .15em 0; text-align: left; vertical-align: top; }
 th { color: #4a5263; font-weight: 600; }
 .facts span { margin-right: 1.4em; }
 .err { color: #8a1c1c; }
 footer { color: #7a8292; font-size: .85em; }
</style>
</head>
<body>
<h1>Inferoxy</h1>
<div id="server"></div>
<div id="models"></div>
<footer>Refreshes every <span id="every"></span> s. Updated <span id="updated"></span>.
Data: <a href="status.json">status.json</a>.</footer>
<script id="initial" type="application/json">__DATA__</script>
<script>
"use strict";
const REFRESH_MS = __REFRESH_MS__;
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function ms(v) { return v === null || v === undefined ? "\\u2014" : v.toFixed(2) + " ms"; }
function row(cells, head) {
  const tr = el("tr");
  for (const c of cells) tr.appendChild(el(head ? "th" : "td", c));
  return tr;
}
function render(data) {
  const s = data.server;
  const server = document.getElementById("server");
  server.replaceChildren();
  server.appendChild(el("span", s.draining ? "draining" : (s.ready ? "ready" : "not ready"),
                        "badge " + (s.ready ? "ready" : "LOADING")));
  server.appendChild(el("span", "  GPUs: " + (s.gpus.length ? s.gpus.join(", ") : "none") +
                        " \\u00b7 live sequences: " + s.live_sequences));
  const box = document.getElementById("models");
  box.replaceChildren();
  for (const m of data.models) {
    const div = el("div", null, "model");
    div.dataset.model = m.name;
    const h = el("h2", m.name + " ");
    h.appendChild(el("span", "v" + m.version));
    h.appendChild(el("span", m.state, "badge " + m.state));
    div.appendChild(h);
    if (m.reason) div.appendChild(el("div", m.reason, "err"));
    const lat = m.latency;
    const facts = el("div", null, "facts");
    facts.appendChild(el("span", "queued: " + m.queued + " / " + m.max_queue_size));
    facts.appendChild(el("span", "running: " + m.running));
    facts.appendChild(el("span", "batch size: " + m.batch_size));
    facts.appendChild(el("span", (m.stateless ? "stateless" : "stateful") +
                      (m.live_sequences !== undefined ? " (" + m.live_sequences + " live)" : "")));
    facts.appendChild(el("span", "answered: " + m.success + " ok, " + m.failures + " failed"));
    div.appendChild(facts);
    const lt = el("table", null, "latency");
    lt.appendChild(row(["latency", "requests", "mean", "p50", "p90", "p99"], true));
    lt.appendChild(row([lat.window_s ? "last " + Math.round(lat.window_s) + " s" : "since start",
                        lat.count, ms(lat.mean_ms), ms(lat.p50_ms), ms(lat.p90_ms),
                        ms(lat.p99_ms)]));
    div.appendChild(lt);
    const ct = el("table", null, "copies");
    ct.appendChild(row(["copy", "GPU", "state", "process", "restarts", "batches out",
                        "last error"], true));
    for (const c of m.copies) {
      const proc = c.pid === null ? "" : "pid " + c.pid + (c.host ? " on " + c.host : "");
      const tr = row([c.id, c.gpu === null ? "cpu" : c.gpu, "", proc, c.restarts,
                      c.outstanding, c.error || ""]);
      tr.children[2].appendChild(el("span", c.state, "badge copy-state " +
                                    c.state.replace(" ", "-")));
      ct.appendChild(tr);
    }
    div.appendChild(ct);
    box.appendChild(div);
  }
  document.getElementById("updated").textContent = new Date().toLocaleTimeString();
}
document.getElementById("every").textContent = REFRESH_MS / 1000;
render(JSON.parse(document.getElementById("initial").textContent));
async function refresh() {
  try {
    const r = await fetch("status.json", {cache: "no-store"});
    if (r.ok) {
      render(await r.json());
      document.body.dataset.refreshes = Number(document.body.dataset.refreshes || 0) + 1;
    }
  } catch (e) { /* the gateway is restarting: try again next time */ }
}
setInterval(refresh, REFRESH_MS);
</script>
</body>
</html>
"""


def render_page(data: dict[str, Any]) -> str:
    # Inside <script>, "</" would end the element: JSON allows "<" written as \\u003c.
    embedded = orjson.dumps(data).decode().replace("<", "\\u003c")
    return (_PAGE.replace("__REFRESH_MS__", str(REFRESH_MS))
            .replace("__DATA__", embedded))
