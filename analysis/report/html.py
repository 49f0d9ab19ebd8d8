"""The report's HTML: one self-contained page (inline CSS, figures as data: URIs, one inline script for the
interactive views, analysis/report/interactive.py, and nothing fetched from any address), sections with a
table of contents, tables, figures and notes."""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from typing import Any, Sequence

CSS = """
:root { --fg: #1d2327; --muted: #5b6670; --line: #d8dde2; --bg-alt: #f5f7f9; --accent: #1f5f99; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; line-height: 1.5;
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 1.5rem 1.25rem 4rem; }
h1 { font-size: 1.7rem; margin: 0 0 .25rem; }
h2 { font-size: 1.35rem; margin: 2.5rem 0 .5rem; padding-top: .5rem; border-top: 2px solid var(--line); }
h3 { font-size: 1.1rem; margin: 1.5rem 0 .4rem; }
p, li { max-width: 75ch; }
.subtitle { color: var(--muted); margin: 0 0 1rem; }
a { color: var(--accent); }
nav.toc { background: var(--bg-alt); border: 1px solid var(--line); border-radius: 6px; padding: .6rem 1.2rem;
          margin: 1rem 0; }
nav.toc ol { margin: .3rem 0; padding-left: 1.4rem; columns: 2; }
figure { margin: 1rem 0; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { color: var(--muted); font-size: .9rem; margin-top: .3rem; max-width: 90ch; }
.scroll { overflow-x: auto; margin: .6rem 0; }
table { border-collapse: collapse; font-size: .88rem; }
th, td { border: 1px solid var(--line); padding: .25rem .5rem; text-align: left; vertical-align: top; }
th { background: var(--bg-alt); }
table.kv th { font-weight: normal; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { border-left: 4px solid #c9a227; background: #fdf8e7; padding: .5rem .8rem; margin: .8rem 0; }
.verdict { font-weight: 600; white-space: nowrap; }
.holds { color: #1b7a2f; } .fails { color: #b3261e; } .unmeasured { color: #8a6d00; }
.flag { color: #b3261e; font-weight: 600; }
pre { background: var(--bg-alt); border: 1px solid var(--line); padding: .6rem; overflow-x: auto;
      font-size: .8rem; max-height: 32rem; }
details { margin: .6rem 0; } summary { cursor: pointer; color: var(--accent); }
.live { margin: .5rem 0; } .live[hidden] { display: none; } .live.pending { min-height: 4rem; }
.js figure.live-on > img, .js figure.live-on > .static { display: none; }
.tip { position: absolute; z-index: 10; background: #fff; border: 1px solid #8a949c; border-radius: 4px;
       padding: .35rem .55rem; max-width: 34rem; font-size: .82rem; box-shadow: 0 2px 8px rgba(0,0,0,.18);
       pointer-events: none; }
.tip-head { font-weight: 600; } .tip-sent { margin-top: .2rem; }
mark { background: #ffe08a; padding: 0 .1em; border-radius: 2px; }
.controls { display: flex; gap: 1rem; flex-wrap: wrap; align-items: center; margin: .4rem 0; font-size: .9rem; }
.legend { font-size: .82rem; color: var(--muted); margin: .2rem 0; }
.key { margin-right: .8rem; white-space: nowrap; }
.key i { display: inline-block; width: .7rem; height: .7rem; border-radius: 50%; margin-right: .25rem; }
svg.tsne-plot { width: 100%; max-width: 640px; border: 1px solid var(--line); border-radius: 4px; }
svg .pt { cursor: crosshair; } svg .axis { stroke: #8a949c; } svg .tick { font-size: 9px; fill: #444; }
svg .lab { font-size: 10px; fill: #333; } svg .ttl { font-size: 11px; font-weight: 600; fill: #1d2327; }
.curve-grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: .6rem; }
svg.curve { width: 100%; height: auto; }
select.occurrences { width: 100%; font-size: .85rem; }
td.nbr { font-size: .8rem; min-width: 11rem; } p.query { font-size: .95rem; }
.badges { margin-top: .15rem; font-size: .72rem; color: var(--muted); }
.badges span { display: inline-block; width: 1.2em; text-align: center; border-radius: 3px; margin-right: 1px; }
.badges .on { background: #1b7a2f; color: #fff; } .badges .off { background: #eceff1; color: #9aa3aa; }
.matrix-row { display: flex; flex-wrap: wrap; gap: 1rem; align-items: flex-start; }
.matrix-row > div { flex: 1 1 360px; max-width: 560px; } svg.matrix, svg.mds { width: 100%; height: auto; }
""" + "".join(f".hide-s{i} .s{i} {{ display: none; }} " for i in range(24)) + """
@media print { .live, .tip, noscript { display: none !important; } figure.live-on > img, figure.live-on > .static { display: block !important; } }
"""

VERDICT_CLASS = {"holds": "holds", "does not hold": "fails", "inconclusive": "unmeasured", "not measured": "unmeasured"}


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """A table cell: numbers rounded to what can be read (3 significant places or so), None as "—"."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        size = abs(value)
        if value != value:
            return "nan"
        if size >= 1000:
            return f"{value:,.0f}"
        if size >= 10:
            return f"{value:.1f}"
        return f"{value:.3f}" if size >= 0.01 or size == 0 else f"{value:.4f}"
    return str(value)


@dataclass
class Section:
    """A numbered part of the report: its anchor, title and HTML body."""

    anchor: str
    title: str
    body: list[str] = field(default_factory=list)

    def add(self, *parts: str) -> "Section":
        self.body.extend(parts)
        return self


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], caption: str | None = None,
          raw: bool = False) -> str:
    """An HTML table; numbers right-aligned. `raw`: cells are HTML already (else escaped)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(v, raw) for v in row) + "</tr>" for row in rows)
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f'<div class="scroll"><table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def key_values(pairs: Sequence[tuple[str, Any]]) -> str:
    """A two-column table of names and values (no header row)."""
    rows = "".join(f"<tr><th scope=\"row\">{esc(k)}</th>{_cell(v, False)}</tr>" for k, v in pairs)
    return f'<div class="scroll"><table class="kv"><tbody>{rows}</tbody></table></div>'


def _cell(value: Any, raw: bool) -> str:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    text = str(value) if raw and isinstance(value, str) else esc(fmt(value))
    return f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>"


def figure(data: bytes, mime: str, alt: str, caption: str, live: str = "") -> str:
    """A figure inlined as a data: URI (`mime`: image/svg+xml or image/png); `live`: its interactive view
    (analysis.report.interactive.view), drawn in the image's place when scripts run."""
    uri = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return (f'<figure><img src="{uri}" alt="{esc(alt)}" loading="eager">{live}'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def not_measured(what: str, why: str) -> str:
    return f'<p class="note"><strong>Not measured: {esc(what)}.</strong> {esc(why)}</p>'


def para(text: str) -> str:
    return f"<p>{esc(text)}</p>"


def details(summary: str, inner_html: str) -> str:
    return f"<details><summary>{esc(summary)}</summary>{inner_html}</details>"


def pre(text: str) -> str:
    return f"<pre>{esc(text)}</pre>"


def verdict_cell(verdict: str) -> str:
    return f'<span class="verdict {VERDICT_CLASS.get(verdict, "")}">{esc(verdict)}</span>'


def page(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    """The whole document: title, table of contents, numbered sections; the script of the live views at the
    end, the only script the page's policy lets run (by its hash)."""
    from analysis.report.interactive import script_hash, script_tag

    toc = "".join(f'<li><a href="#{esc(s.anchor)}">{esc(s.title)}</a></li>' for s in sections)
    body = "".join(f'<section id="{esc(s.anchor)}"><h2>{i}. {esc(s.title)}</h2>{"".join(s.body)}</section>'
                   for i, s in enumerate(sections, start=1))
    live = 'class="live" data-view=' in body  # the script, and the policy's leave to run it, only with a view
    scripts, policy = (script_tag(), f"; script-src {script_hash()}") if live else ("", "")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
            f"style-src 'unsafe-inline'{policy}\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>"
            f"<h1>{esc(title)}</h1><p class=\"subtitle\">{esc(subtitle)}</p>"
            f'<nav class="toc" aria-label="Contents"><strong>Contents</strong><ol>{toc}</ol></nav>'
            f"{body}</main>{scripts}</body></html>\n")
