"""A report as a list of plain blocks (headings, text, tables, figures), written out either as one self-contained
HTML file (images inside as data: URIs, no script, no font or style from elsewhere: it opens offline), as
Markdown with its images in a folder beside it, or for a paper: LaTeX tables (booktabs) and every chart as a PDF
in a folder.

Charts become PNGs and PDFs with vl-convert, which carries its own Vega and renders without a browser or the network.
"""
from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.errors import StudioError
from core.files import write_atomic

FORMATS = ("html", "md", "latex")
CHART_SCALE = 2  # PNG pixels per CSS pixel: sharp on high-density screens and in print


class ReportError(StudioError):
    pass


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Text:
    text: str
    note: bool = False  # small print


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    first_column_header: bool = True  # the first column names the rows


@dataclass
class Figure:
    name: str        # file name stem for Markdown's folder; unique within a report
    png: bytes
    caption: str
    width: int       # CSS pixels the image is shown at
    chart: object | None = None  # the Altair chart it was rendered from (a PDF for LaTeX); None for a picture


@dataclass
class Gallery:
    """Small pictures side by side, each with its caption."""
    figures: list[Figure] = field(default_factory=list)


Block = Heading | Text | Table | Figure | Gallery


def chart_png(chart) -> tuple[bytes, int]:
    """An Altair chart (core.report.charts) as PNG bytes, and its width in CSS pixels."""
    import vl_convert

    png = vl_convert.vegalite_to_png(chart.to_dict(), scale=CHART_SCALE)
    width = int.from_bytes(png[16:20], "big")  # the PNG's IHDR width
    return png, width // CHART_SCALE


def image_png(pixels: np.ndarray) -> bytes:
    """A uint8 (height, width, 3) array as PNG bytes."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


# ---- HTML ---------------------------------------------------------------------------------------------

STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2937; margin: 0; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 28px; margin: 8px 0 4px; } h2 { font-size: 21px; margin: 36px 0 8px; border-bottom: 1px solid #e5e7eb;
padding-bottom: 4px; } h3 { font-size: 17px; margin: 24px 0 6px; }
p.note { color: #6b7280; font-size: 13px; margin: 2px 0 10px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 14px; }
th, td { border: 1px solid #e5e7eb; padding: 4px 10px; text-align: left; vertical-align: top; }
thead th { background: #eff6ff; } tbody th { background: #f9fafb; font-weight: 600; white-space: nowrap; }
td code { font-size: 12px; word-break: break-all; }
figure { display: inline-block; margin: 8px 24px 16px 0; vertical-align: top; }
figcaption { color: #6b7280; font-size: 13px; }
.gallery figure { margin: 4px 10px 10px 0; width: 112px; } .gallery figcaption { font-size: 11px; }
.gallery img { image-rendering: pixelated; }
"""


def inline(text: str) -> str:
    """Escaped text with `code` spans kept."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _html_block(block: Block) -> str:
    if isinstance(block, Heading):
        return f"<h{block.level}>{html.escape(block.text)}</h{block.level}>"
    if isinstance(block, Text):
        return ('<p class="note">' if block.note else "<p>") + f"{inline(block.text)}</p>"
    if isinstance(block, Table):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header)
        rows = "".join("<tr>" + "".join(
            f"<th>{inline(cell)}</th>" if i == 0 and block.first_column_header else f"<td>{inline(cell)}</td>"
            for i, cell in enumerate(row)) + "</tr>" for row in block.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    if isinstance(block, Figure):
        return _html_figure(block)
    return f"<div class=\"gallery\">{''.join(_html_figure(f) for f in block.figures)}</div>"


def _html_figure(figure: Figure) -> str:
    data = base64.b64encode(figure.png).decode()
    return (f"<figure><img src=\"data:image/png;base64,{data}\" width=\"{figure.width}\" "
            f"alt=\"{html.escape(figure.caption)}\"><figcaption>{html.escape(figure.caption)}</figcaption></figure>")


def to_html(title: str, blocks: list[Block]) -> str:
    body = "\n".join(_html_block(b) for b in blocks)
    # the policy forbids loading anything from anywhere: what is not inside the file cannot be fetched
    policy = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{policy}\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n"
            f"<body><main>\n<h1>{html.escape(title)}</h1>\n{body}\n</main></body></html>\n")


# ---- Markdown -----------------------------------------------------------------------------------------

def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(title: str, blocks: list[Block], images: str) -> tuple[str, dict[str, bytes]]:
    """(the Markdown, {file name: PNG}) with images referenced as `images`/NAME.png."""
    lines, files = [f"# {title}", ""], {}

    def figure(f: Figure) -> str:
        files[f"{f.name}.png"] = f.png
        return f"![{_cell(f.caption)}]({images}/{f.name}.png)"

    for block in blocks:
        if isinstance(block, Heading):
            lines += [f"{'#' * block.level} {block.text}", ""]
        elif isinstance(block, Text):
            lines += [f"*{block.text}*" if block.note else block.text, ""]
        elif isinstance(block, Table):
            lines += ["| " + " | ".join(map(_cell, block.header)) + " |",
                      "| " + " | ".join("---" for _ in block.header) + " |",
                      *("| " + " | ".join(map(_cell, row)) + " |" for row in block.rows), ""]
        elif isinstance(block, Figure):
            lines += [figure(block), "", f"*{block.caption}*", ""]
        else:
            lines += [" ".join(figure(f) for f in block.figures), ""]
    return "\n".join(lines), files


def check_out(out: str | Path, fmt: str) -> None:
    """Raise ReportError, saying what to do, where a report could not be written as `out` in `fmt`."""
    out = Path(out)
    if fmt not in FORMATS:
        raise ReportError(f"format {fmt!r}: use html, md or latex")
    if fmt == "latex":
        if out.exists() and not out.is_dir():
            raise ReportError(f"{out}: is a file; --format latex writes a folder (tables.tex and the charts as PDFs)")
    elif out.is_dir():
        raise ReportError(f"{out}: is a folder; name the report's file, e.g. {out / ('report.' + fmt)}")
    if not out.parent.is_dir():
        raise ReportError(f"{out.parent}: no such folder; create it (mkdir -p {out.parent}) or write elsewhere")


def write(title: str, blocks: list[Block], out: str | Path, fmt: str) -> list[Path]:
    """Write the report to `out` (HTML: that file; Markdown: that file and the folder OUT_images/ beside it);
    returns the files written."""
    check_out(out, fmt)
    out = Path(out)
    if fmt == "html":
        write_atomic(out, to_html(title, blocks).encode())
        return [out]
    folder = out.with_name(f"{out.stem}_images")
    text, files = to_markdown(title, blocks, folder.name)
    folder.mkdir(exist_ok=True)
    for name, png in files.items():
        write_atomic(folder / name, png)
    write_atomic(out, text.encode())
    return [out, *(folder / name for name in files)]


# ---- LaTeX --------------------------------------------------------------------------------------------

LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                 "×": r"$\times$", "→": r"$\rightarrow$", "`": ""}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(c, c) for c in text)


@dataclass
class LatexTable:
    table: Table
    caption: str
    label: str
    align: str = "l"  # the alignment of every column after the first


def to_latex(tables: list[LatexTable], made: str) -> str:
    """Booktabs tables (\\usepackage{booktabs}), each a `table` float with its caption and label."""
    def row(cells: list[str]) -> str:
        return " & ".join(latex_escape(c) for c in cells) + r" \\"

    parts = [f"% {latex_escape(made)}", "% needs \\usepackage{booktabs}", ""]
    for t in tables:
        columns = "l" + t.align * (len(t.table.header) - 1)
        parts += [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(t.caption)}}}",
                  rf"\label{{{t.label}}}", rf"\begin{{tabular}}{{{columns}}}", r"\toprule", row(t.table.header),
                  r"\midrule", *(row(cells) for cells in t.table.rows), r"\bottomrule", r"\end{tabular}",
                  r"\end{table}", ""]
    return "\n".join(parts)


def write_latex(tables: list[LatexTable], figures: list[Figure], out: str | Path, made: str) -> list[Path]:
    """`out`/tables.tex, every chart as `out`/NAME.pdf and `out`/figures.tex including them; returns the files."""
    import vl_convert

    check_out(out, "latex")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written, includes = [], [f"% {latex_escape(made)}", "% needs \\usepackage{graphicx}", ""]
    for figure in figures:
        pdf = out / f"{figure.name}.pdf"
        write_atomic(pdf, vl_convert.vegalite_to_pdf(figure.chart.to_dict()))
        written.append(pdf)
        includes += [r"\begin{figure}[t]", r"\centering", rf"\includegraphics[width=\linewidth]{{{figure.name}}}",
                     rf"\caption{{{latex_escape(figure.caption)}}}", rf"\label{{fig:{figure.name}}}",
                     r"\end{figure}", ""]
    write_atomic(out / "figures.tex", "\n".join(includes).encode())
    write_atomic(out / "tables.tex", to_latex(tables, made).encode())
    return [out / "tables.tex", out / "figures.tex", *written]
