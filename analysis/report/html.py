"""The report's HTML: one self-contained page (inline CSS, figures as data: URIs, no script, nothing
fetched from any address), sections with a table of contents, tables, figures and notes."""
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


def figure(data: bytes, mime: str, alt: str, caption: str) -> str:
    """A figure inlined as a data: URI (`mime`: image/svg+xml or image/png)."""
    uri = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return (f'<figure><img src="{uri}" alt="{esc(alt)}" loading="eager">'
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
    """The whole document: title, table of contents, numbered sections."""
    toc = "".join(f'<li><a href="#{esc(s.anchor)}">{esc(s.title)}</a></li>' for s in sections)
    body = "".join(f'<section id="{esc(s.anchor)}"><h2>{i}. {esc(s.title)}</h2>{"".join(s.body)}</section>'
                   for i, s in enumerate(sections, start=1))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>"
            f"<h1>{esc(title)}</h1><p class=\"subtitle\">{esc(subtitle)}</p>"
            f'<nav class="toc" aria-label="Contents"><strong>Contents</strong><ol>{toc}</ol></nav>'
            f"{body}</main></body></html>\n")
