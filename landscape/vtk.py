r"""Export of a 2D loss surface to the legacy VTK format (ASCII ``STRUCTURED_GRID``) for ParaView, and its reader.

Li et al.'s scripts render surfaces in ParaView from a VTK file; this writes the same kind of file from a
:class:`landscape.Surface`. The grid has ``len(alphas) × len(betas) × 1`` points; point ``(i, j)`` sits at
:math:`(\alpha_i, \beta_j, z_{ij})` with :math:`z` the loss (or its :math:`\log_{10}`, scaled by ``z_scale``), and
carries the ``loss`` and ``accuracy`` as point scalars. Points run with :math:`\alpha` fastest, as VTK expects.
Values are written with 17 significant digits, so reading the file back gives the surface's numbers exactly;
non-finite values are written as ``nan``/``inf``. The file is written atomically (:func:`landscape.files.atomic_write`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from landscape.files import atomic_write
from landscape.surfaces import Surface

__all__ = ["read_vtk", "write_vtk"]


def _number(value: float) -> str:
    return f"{value:.17g}"


def write_vtk(
    surface: Surface, path: str | os.PathLike, log: bool = False, z_scale: float = 1.0, title: str | None = None
) -> Path:
    r"""Write a 2D surface as a legacy ASCII VTK structured grid; returns the path.

    Args:
        surface: a 2D :class:`landscape.Surface`.
        path: the ``.vtk`` file to write.
        log: use :math:`\log_{10}` of the loss as the height (non-positive losses become NaN).
        z_scale: multiply the height by this factor (for a readable aspect in ParaView).
        title: the file's title line (default: the surface's kind and key).

    Raises:
        ValueError: for a 1D surface.

    Example:
        >>> import tempfile
        >>> s = Surface(np.array([-1.0, 0.0, 1.0]), np.array([0.0, 1.0]), np.arange(6.0).reshape(3, 2), np.ones((3, 2)))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     grid = read_vtk(write_vtk(s, Path(d) / "s.vtk"))
        >>> grid["dimensions"], grid["point_data"]["loss"].reshape(2, 3).T.tolist() == s.loss.tolist()
        ((3, 2, 1), True)
    """
    if surface.betas is None:
        raise ValueError("VTK export needs a 2D surface (a 1D curve has no grid)")
    nx, ny = len(surface.alphas), len(surface.betas)
    loss = np.asarray(surface.loss, dtype=np.float64)
    height = loss
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            height = np.where(loss > 0, np.log10(loss), np.nan)
    height = height * z_scale
    title = title or f"valley {surface.config.get('kind', 'surface')} {surface.config.get('key', '')}".strip()
    lines = ["# vtk DataFile Version 3.0", " ".join(title.splitlines())[:255], "ASCII", "DATASET STRUCTURED_GRID"]
    lines += [f"DIMENSIONS {nx} {ny} 1", f"POINTS {nx * ny} double"]
    for j in range(ny):
        for i in range(nx):
            lines.append(f"{_number(surface.alphas[i])} {_number(surface.betas[j])} {_number(height[i, j])}")
    lines.append(f"POINT_DATA {nx * ny}")
    for name, values in (("loss", loss), ("accuracy", np.asarray(surface.accuracy, dtype=np.float64))):
        lines += [f"SCALARS {name} double 1", "LOOKUP_TABLE default"]
        lines += [" ".join(_number(values[i, j]) for i in range(nx)) for j in range(ny)]
    return atomic_write(path, "\n".join(lines) + "\n")


def read_vtk(path: str | os.PathLike) -> dict:
    """Read a legacy ASCII VTK structured grid (as :func:`write_vtk` writes it).

    Returns:
        ``{"title", "dimensions", "points" (N, 3), "point_data" {name: (N,)}}`` with points in file order.

    Raises:
        ValueError: if the file is not an ASCII structured grid or its counts do not match.
    """
    tokens_by_line = Path(path).read_text().splitlines()
    if len(tokens_by_line) < 5 or not tokens_by_line[0].startswith("# vtk DataFile"):
        raise ValueError(f"{path}: not a legacy VTK file")
    if tokens_by_line[2].strip() != "ASCII" or tokens_by_line[3].split() != ["DATASET", "STRUCTURED_GRID"]:
        raise ValueError(f"{path}: expected an ASCII STRUCTURED_GRID")
    words = " ".join(tokens_by_line[4:]).split()
    pos = 0

    def expect(word: str) -> None:
        nonlocal pos
        if words[pos] != word:
            raise ValueError(f"{path}: expected {word!r}, found {words[pos]!r}")
        pos += 1

    def numbers(count: int) -> np.ndarray:
        nonlocal pos
        values = np.array([float(w) for w in words[pos : pos + count]], dtype=np.float64)
        if len(values) != count:
            raise ValueError(f"{path}: expected {count} numbers, found {len(values)}")
        pos += count
        return values

    expect("DIMENSIONS")
    dims = tuple(int(w) for w in words[pos : pos + 3])
    pos += 3
    n = int(np.prod(dims))
    expect("POINTS")
    if int(words[pos]) != n:
        raise ValueError(f"{path}: {words[pos]} points for dimensions {dims}")
    pos += 2
    points = numbers(3 * n).reshape(n, 3)
    data = {}
    if pos < len(words):
        expect("POINT_DATA")
        pos += 1
        while pos < len(words):
            expect("SCALARS")
            name = words[pos]
            pos += 3
            expect("LOOKUP_TABLE")
            pos += 1
            data[name] = numbers(n)
    return {"title": tokens_by_line[1], "dimensions": dims, "points": points, "point_data": data}
