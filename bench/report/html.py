"""The report as one offline HTML page (inline CSS; images are files next to it) and as Markdown."""

from __future__ import annotations

import html
import re

from bench.report.plots import Plot, Skipped
from bench.report.tables import Callout, Section, Table, to_html, to_markdown

CSS = """
body { font: 15px/1.45 -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif;
       color: #1d1d1f; max-width: 1320px; margin: 0 auto; padding: 18px 28px 60px; background: #fff; }
h1 { font-size: 26px; margin: 6px 0 10px; }
h2 { font-size: 21px; margin-top: 34px; border-bottom: 2px solid #dde3ea; padding-bottom: 4px; }
h3 { font-size: 16px; margin: 22px 0 6px; }
summary h3 { display: inline; cursor: pointer; }
nav a { margin-right: 14px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 4px 0 6px; font-size: 13.5px; }
th, td { border: 1px solid #cfd6de; padding: 4px 9px; text-align: left; vertical-align: top; }
th { background: #eef2f6; }
tbody tr:nth-child(even) { background: #f8fafc; }
td strong { color: #0b5394; }
p.note, figcaption { color: #555; font-size: 13px; }
p.skip { color: #8a5a00; }
figure { margin: 14px 0 22px; }
figure img { max-width: 100%; border: 1px solid #e3e7ec; }
.counts { font-size: 16px; background: #f3f6f9; border-left: 4px solid #0b5394; padding: 8px 12px; }
"""


def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _block_html(block) -> str:
    if isinstance(block, Table):
        return to_html(block)
    if isinstance(block, Plot):
        png, svg = block.files
        return (f'<figure><img src="{html.escape(png)}" alt="{html.escape(block.title)}">'
                f"<figcaption>{html.escape(block.title)}. {html.escape(block.caption)} "
                f'<a href="{html.escape(svg)}">SVG</a></figcaption></figure>')
    cls = ' class="skip"' if isinstance(block, Skipped) else (' class="counts"' if isinstance(block, Callout) else "")
    return f"<p{cls}>{html.escape(block)}</p>"


def render_html(title: str, intro: list[str], sections: list[Section]) -> str:
    nav = " ".join(f'<a href="#{_anchor(s.title)}">{html.escape(s.title)}</a>' for s in sections)
    body = [f"<h1>{html.escape(title)}</h1>", *(_block_html(p) for p in intro), f"<nav>{nav}</nav>"]
    for s in sections:
        body.append(f'<h2 id="{_anchor(s.title)}">{html.escape(s.title)}</h2>')
        body += [_block_html(b) for b in s.blocks]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _block_md(block) -> str:
    if isinstance(block, Table):
        return to_markdown(block)
    if isinstance(block, Plot):
        png, svg = block.files
        return f"![{block.title}]({png})\n\n_{block.title}. {block.caption}_ ([SVG]({svg}))"
    return block


def render_markdown(title: str, intro: list[str], sections: list[Section]) -> str:
    parts = [f"# {title}", *intro]
    for s in sections:
        parts += [f"## {s.title}", *(_block_md(b) for b in s.blocks)]
    return "\n\n".join(parts) + "\n"
