"""What the lab and PACS commands print for a person: aligned columns, sizes in decimal units."""

from __future__ import annotations

Columns = tuple[tuple[str, int | None, bool], ...]  # header, width limit, right-aligned


def table(rows: list[list[str]], columns: Columns) -> str:
    rows = [
        [_clip(cell, limit) for cell, (_, limit, _) in zip(row, columns, strict=True)]
        for row in rows
    ]
    headers = [header for header, _, _ in columns]
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = []
    for row in [headers, *rows]:
        cells = [
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, (_, _, right) in zip(row, widths, columns, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _clip(text: str, limit: int | None) -> str:
    text = " ".join(text.split())  # no tab or newline breaks the alignment
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "~"


def human_size(count: int) -> str:
    """Bytes in decimal units, as tqdm counts them: 512 B, 12.3 MB, 1.2 GB."""
    size = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")
