"""The report that gathers every figure: ``report.md`` and a self-contained ``report.html`` (images embedded)."""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from landscape.files import publish
from studies.store import write_frame


@dataclass
class FigureOutput:
    """What one figure script produced: images, tables, a caption stating the setup, and notes."""

    name: str
    title: str
    caption: str
    images: list[Path] = field(default_factory=list)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def write_tables(self, out_dir: str | os.PathLike) -> None:
        """Save each table as CSV beside the images."""
        for key, table in self.tables.items():
            write_frame(Path(out_dir) / f"{key}.csv", table)


def read_results(root: str | os.PathLike, study: str, scale: str, columns: tuple[str, ...]) -> pd.DataFrame:
    """A study's combined results ``<root>/<study>/<scale>.csv``; its notes (e.g. data absent) and scale in ``attrs``.

    Raises:
        ValueError: the file lacks one of ``columns`` (the figure script and the study disagree).
    """
    folder = Path(root) / study
    frame = pd.read_csv(folder / f"{scale}.csv", low_memory=False)
    missing = set(columns) - set(frame.columns)
    if missing:
        raise ValueError(f"{folder / f'{scale}.csv'} lacks the columns {sorted(missing)}")
    notes_file = folder / f"{scale}.notes.txt"
    frame.attrs["notes"] = notes_file.read_text().splitlines() if notes_file.exists() else []
    frame.attrs["scale"] = scale
    return frame


def _markdown_table(table: pd.DataFrame) -> str:
    return table.to_markdown(index=False, floatfmt=".4g")


def write_report(
    outputs: list[FigureOutput], out_dir: str | os.PathLike, theory: pd.DataFrame | None = None, header: str = ""
) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` in ``out_dir`` listing every figure, table and the theory checks."""
    out_dir = Path(out_dir)
    md = ["# valley — figures and checks", "", header, ""]
    body = [f"<h1>valley — figures and checks</h1><p>{html.escape(header)}</p>"]
    for out in outputs:
        md += [f"## {out.title}", "", out.caption, ""]
        body.append(f"<h2>{html.escape(out.title)}</h2><p>{html.escape(out.caption)}</p>")
        for image in out.images:
            if image.suffix == ".png":
                rel = image.relative_to(out_dir).as_posix()
                md += [
                    f"![{out.name}]({rel})",
                    f"(PDF: `{image.with_suffix('.pdf').relative_to(out_dir).as_posix()}`)",
                    "",
                ]
                data = base64.b64encode(image.read_bytes()).decode()
                body.append(f'<img src="data:image/png;base64,{data}" style="max-width:100%">')
        for key, table in out.tables.items():
            md += [f"**{key}**", "", _markdown_table(table), ""]
            body.append(f"<h3>{html.escape(key)}</h3>{table.to_html(index=False, float_format='{:.4g}'.format)}")
        for note in out.notes:
            md += [f"> {note}", ""]
            body.append(f"<blockquote>{html.escape(note)}</blockquote>")
    if theory is not None:
        from theory import format_markdown

        md += ["## Theory checks", "", format_markdown(theory).replace("\n## Checks", "\n### Checks"), ""]
        columns = ["item", "id", "title", "method", "value", "reference", "tolerance", "passed", "note"]
        body.append(f"<h2>Theory checks</h2>{theory[columns].to_html(index=False, float_format='{:.4g}'.format)}")
    style = "body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
    style += "td,th{border:1px solid #ccc;padding:2px 6px}"
    page = f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>valley report</title><style>{style}</style>"
    page += f"</head><body>{''.join(body)}</body></html>"
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    publish({md_path: "\n".join(md), html_path: page})
    return md_path, html_path
