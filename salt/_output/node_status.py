"""
Outputter ``node_status``: ``salt-run node.status`` as one table, a row per node, columns in
the order the runner gives them (``--out=json`` prints the rows and the exit code instead).
"""


def output(data, **kwargs):
    rows = data.get("nodes") or []
    if not rows:
        return "no node: no record and no live instance"
    labels = list(rows[0])
    cells = [labels] + [["-" if row[k] is None else str(row[k]) for k in labels] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(labels))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in cells
    )
