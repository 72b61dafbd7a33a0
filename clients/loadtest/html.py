"""A self-contained HTML report: the summary, and inline SVG plots of latency
over time, the latency histogram, and throughput over time, per operation."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from loadtest.report import HEADER, op_rows, to_json

W, H, PAD = 640, 240, 48
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf")


def _finite(values: list[float]) -> list[float]:
    return [v for v in values if v is not None and not math.isnan(v)]


def line_chart(title: str, series: dict[str, list[float]], y_label: str) -> str:
    """One SVG with a line per series; x is seconds since measuring began."""
    points = [v for values in series.values() for v in _finite(values)]
    longest = max((len(v) for v in series.values()), default=0)
    if not points or longest < 1:
        return f"<p>{html.escape(title)}: no data</p>"
    top = max(points) * 1.1 or 1.0
    span = max(1, longest - 1)

    def xy(i: int, v: float) -> str:
        return f"{PAD + i * (W - 2 * PAD) / span:.1f},{H - PAD - v / top * (H - 2 * PAD):.1f}"

    parts = [_frame(title, f"{top:.3g}", y_label, f"{longest - 1} s")]
    for n, (name, values) in enumerate(series.items()):
        colour = COLOURS[n % len(COLOURS)]
        coords = " ".join(xy(i, v) for i, v in enumerate(values) if not math.isnan(v))
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{coords}"/>'
        )
        parts.append(
            f'<text x="{W - PAD + 4}" y="{PAD + 14 * n}" fill="{colour}" font-size="11">'
            f"{html.escape(name)}</text>"
        )
    return _svg(parts)


def bar_chart(title: str, buckets: list[tuple[float, int]]) -> str:
    """The latency histogram: bars over log-spaced buckets (upper bound in ms)."""
    if not buckets:
        return f"<p>{html.escape(title)}: no data</p>"
    top = max(n for _, n in buckets) or 1
    width = (W - 2 * PAD) / len(buckets)
    parts = [_frame(title, f"{top:,}", "calls", f"{buckets[-1][0]:g} ms")]
    for i, (upper, n) in enumerate(buckets):
        h = n / top * (H - 2 * PAD)
        parts.append(
            f'<rect x="{PAD + i * width:.1f}" y="{H - PAD - h:.1f}" width="{width * 0.9:.1f}" '
            f'height="{h:.1f}" fill="#1f77b4"><title>up to {upper:g} ms: {n:,}</title></rect>'
        )
    first = buckets[0][0]
    parts.append(
        f'<text x="{PAD}" y="{H - PAD + 14}" font-size="10">{first:g} ms (log scale)</text>'
    )
    return _svg(parts)


def _frame(title: str, top: str, y_label: str, x_end: str) -> str:
    return (
        f'<text x="{PAD}" y="16" font-size="13" font-weight="bold">{html.escape(title)}</text>'
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="#999"/>'
        f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{H - PAD}" stroke="#999"/>'
        f'<text x="{PAD - 4}" y="{PAD}" font-size="10" text-anchor="end">{top}</text>'
        f'<text x="{PAD - 4}" y="{H - PAD}" font-size="10" text-anchor="end">0</text>'
        f'<text x="{PAD - 40}" y="{H / 2}" font-size="10">{html.escape(y_label)}</text>'
        f'<text x="{W - PAD}" y="{H - PAD + 14}" font-size="10" text-anchor="end">{x_end}</text>'
    )


def _svg(parts: list[str]) -> str:
    return (
        f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{W + 80}" height="{H}" '
        f'viewBox="0 0 {W + 80} {H}">' + "".join(parts) + "</svg>"
    )


def plots(run: dict[str, Any]) -> list[str]:
    ops = run["ops"]
    charts = [
        line_chart(
            "latency over time (p99 per second)",
            {n: [s["p99_ms"] for s in op["timeline"]] for n, op in ops.items()},
            "ms",
        ),
        line_chart(
            "latency over time (p50 per second)",
            {n: [s["p50_ms"] for s in op["timeline"]] for n, op in ops.items()},
            "ms",
        ),
        line_chart(
            "throughput over time",
            {n: [float(s["ok"]) for s in op["timeline"]] for n, op in ops.items()},
            "ok/s",
        ),
    ]
    charts += [bar_chart(f"latency histogram: {n}", op["histogram"]) for n, op in ops.items()]
    return charts


def write_html(result: dict[str, Any], path: Path) -> None:
    run = result["run"]
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
        for r in op_rows(run["ops"])
    )
    head = "".join(f"<th>{h}</th>" for h in HEADER)
    check = run["check"]
    verdict = "passed" if check["passed"] else "FAILED"
    problems = "".join(f"<li>{html.escape(p)}</li>" for p in check["problems"])
    slim = {k: v for k, v in result.items() if k != "run"}
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>bb-loadtest: {html.escape(run["scenario"])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}
td:first-child{{text-align:left}}svg.plot{{display:block;margin:1em 0}}</style></head>
<body><h1>bb-loadtest: {html.escape(run["scenario"])}</h1>
<p>{html.escape(result["target"])}, {html.escape(result["when"])};
{html.escape(json.dumps(run["shape"]))}</p>
<p>steps completed {run["steps_achieved_per_s"]:,}/s; target {run["steps_target_per_s"]:g}/s
(0: closed loop)</p>
<table><tr>{head}</tr>{rows}</table>
<p>correctness check: <b>{verdict}</b></p><ul>{problems}</ul>
{"".join(plots(run))}
<details><summary>everything else (JSON)</summary>
<pre>{html.escape(to_json(slim))}</pre></details></body></html>
"""
    path.write_text(body, encoding="utf-8")
