"""Rows, ratios and tables (pure: strings in, strings out; the runner writes the files).

One ``Row`` per (scenario, system, concurrency): what the load generator measured, the CPU the
server used per request, and what the v2 statistics say about where the time went. Ratios:

* ``vs_ideal``: the row's items/s over the ideal's (the model in-process, full batches; for a
  model with a declared cost, the formula ``copies x batch / cost(batch)``);
* ``inferoxy_x``: Inferoxy's items/s over the row's, at the same concurrency and scenario
  (> 1: Inferoxy is faster). The summary takes them at each scenario's headline concurrency.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, fields

PEERS = ("triton", "pytriton", "mlserver", "ray")


@dataclass
class Row:
    scenario: str
    system: str
    path: str  # what the system's requests took (a fallback shows here)
    loadgen: str
    concurrency: int
    requests_per_s: float | None = None
    items_per_s: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    gateway_cpu_us: float | None = None  # the server's front process, per request
    server_cpu_us: float | None = None  # its whole process tree, per request
    avg_batch: float | None = None
    queue_us: float | None = None  # v2 statistics, mean per request
    compute_us: float | None = None
    overhead_us: float | None = None  # success time - queue - compute
    vs_ideal: float | None = None
    inferoxy_x: float | None = None
    note: str = ""
    formula_items_per_s: float | None = None  # the ideal's, for a model with a declared cost

    @property
    def measured(self) -> bool:
        return self.items_per_s is not None and self.items_per_s > 0


def add_ratios(rows: list[Row]) -> None:
    """Fill ``vs_ideal`` and ``inferoxy_x`` from the rows of the same scenario."""
    for row in rows:
        if not row.measured:
            continue
        ideal = next((r for r in rows if r.scenario == row.scenario and r.system == "ideal"
                      and r.measured), None)
        # the formula where the model declares its cost (a sleep-timed in-process run stretches
        # on a loaded machine), else the measured in-process rate
        best = ideal and (ideal.formula_items_per_s or ideal.items_per_s)
        if best:
            row.vs_ideal = row.items_per_s / best  # type: ignore[operator]
        same = [r for r in rows if r.scenario == row.scenario and r.system == "inferoxy"
                and r.concurrency == row.concurrency and r.measured]
        # the same load generator where Inferoxy was measured with it
        ours = next((r for r in same if r.loadgen == row.loadgen), same[0] if same else None)
        if ours is not None and row.system not in ("ideal", "ceiling"):
            row.inferoxy_x = ours.items_per_s / row.items_per_s  # type: ignore[operator]


def _fmt(value: object, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if value >= 100:
            return f"{value:.0f}"
        if 0 < abs(value) < 0.01:
            return f"{value:.1e}"
        return f"{value:.{digits}f}"
    return str(value)


def _note(text: str, limit: int = 120) -> str:
    text = text.replace("|", "/")
    return text if len(text) <= limit else text[: limit - 1] + "…"


COLUMNS = [
    ("system", "system"), ("path", "path"), ("loadgen", "load generator"),
    ("concurrency", "conc."), ("items_per_s", "items/s"), ("requests_per_s", "req/s"),
    ("p50_ms", "p50 ms"), ("p90_ms", "p90 ms"), ("p99_ms", "p99 ms"),
    ("gateway_cpu_us", "front CPU µs/req"), ("server_cpu_us", "server CPU µs/req"),
    ("avg_batch", "avg batch"), ("queue_us", "queue µs"), ("compute_us", "compute µs"),
    ("overhead_us", "overhead µs"), ("vs_ideal", "÷ ideal"), ("inferoxy_x", "Inferoxy ÷ this"),
    ("note", "note"),
]


def scenario_markdown(title: str, rows: list[Row]) -> str:
    head = "| " + " | ".join(label for _, label in COLUMNS) + " |"
    rule = "|" + "---|" * len(COLUMNS)
    body = ["| " + " | ".join(_fmt(getattr(r, key)) if key != "note" else _note(r.note)
                              for key, _ in COLUMNS) + " |" for r in rows]
    return "\n".join([f"### {title}", "", head, rule, *body, ""])


def to_csv(rows: list[Row]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[f.name for f in fields(Row)])
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in asdict(r).items()})
    return out.getvalue()


def from_csv(text: str) -> list[Row]:
    kinds = {f.name: f.type for f in fields(Row)}
    rows = []
    for raw in csv.DictReader(io.StringIO(text)):
        values: dict[str, object] = {}
        for key, value in raw.items():
            kind = str(kinds[key])
            if key == "concurrency":
                values[key] = int(value)
            elif "float" in kind:
                values[key] = float(value) if value != "" else None
            else:
                values[key] = value
        rows.append(Row(**values))  # type: ignore[arg-type]
    return rows


@dataclass(frozen=True)
class Summary:
    scenario: str
    concurrency: int
    inferoxy_items_per_s: float | None
    inferoxy_p99_ms: float | None
    ratios: dict[str, float | None]  # peer -> Inferoxy / peer; "ideal" -> Inferoxy / ideal


def summarize(rows: list[Row], headlines: dict[str, int]) -> list[Summary]:
    out = []
    for scenario, conc in headlines.items():
        at = [r for r in rows if r.scenario == scenario and r.measured
              and (r.concurrency == conc or r.system == "ideal")]
        ours = next((r for r in at if r.system == "inferoxy"), None)
        ratios: dict[str, float | None] = {}
        for peer in PEERS:
            row = next((r for r in at if r.system == peer), None)
            ratios[peer] = None if row is None or ours is None else row.inferoxy_x
        ratios["ideal"] = None if ours is None else ours.vs_ideal
        out.append(Summary(scenario, conc, ours.items_per_s if ours else None,
                           ours.p99_ms if ours else None, ratios))
    return out


def summary_markdown(summaries: list[Summary]) -> str:
    head = ("| scenario | conc. | Inferoxy items/s | Inferoxy p99 ms | ÷ Triton | ÷ PyTriton "
            "| ÷ MLServer | ÷ Ray | ÷ ideal |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        cells = [s.scenario, str(s.concurrency), _fmt(s.inferoxy_items_per_s),
                 _fmt(s.inferoxy_p99_ms),
                 *(_fmt(s.ratios.get(k)) for k in (*PEERS, "ideal"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary_csv(summaries: list[Summary]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["scenario", "concurrency", "inferoxy_items_per_s", "inferoxy_p99_ms",
                     *(f"inferoxy_over_{k}" for k in (*PEERS, "ideal"))])
    for s in summaries:
        writer.writerow([s.scenario, s.concurrency, s.inferoxy_items_per_s, s.inferoxy_p99_ms,
                         *("" if s.ratios.get(k) is None else s.ratios[k]
                           for k in (*PEERS, "ideal"))])
    return out.getvalue()
