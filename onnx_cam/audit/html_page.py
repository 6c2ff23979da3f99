"""The parts of onnx-cam's self-contained HTML pages (the audit report, the comparison page):
the page around its sections, figures as PNG data URIs and tables; no script, no external
file."""

from __future__ import annotations

import base64
import html
import io

from matplotlib.figure import Figure


def page(title: str, sections: list[str]) -> str:
    """The whole page: `title` (escaped) as its title and heading, then the HTML `sections`."""
    return _PAGE.format(title=html.escape(title), body="\n".join(sections))


def figure(fig: Figure) -> str:
    """`fig` as an <img> holding its PNG."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="figure" src="data:image/png;base64,{data}">'


def table(header: list[str] | None, rows: list[list]) -> str:
    """A <table> of `rows` (values escaped) under `header` (None: no header row)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header or [])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
                   for row in rows)
    head = f"<thead><tr>{head}</tr></thead>" if head else ""
    return f"<table>{head}<tbody>{body}</tbody></table>"


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
h1 {{ font-size: 1.5em; }} h2 {{ font-size: 1.15em; margin-top: 2em; }}
table {{ border-collapse: collapse; margin: .5em 0; font-size: .9em; }}
td, th {{ border: 1px solid #ccc; padding: .2em .6em; text-align: left; }}
img {{ max-width: 100%; }}
</style></head>
<body><h1>{title}</h1>
{body}
</body></html>
"""
