"""Run a notebook's code cells in order as one script, without Jupyter:

    python notebooks/run.py notebooks/tutorial.ipynb

Markdown cells are skipped; figures go nowhere (matplotlib's file-only backend). The notebooks
are this project's own; this is `python script.py` for a script kept as cells.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def cells_as_script(path: Path) -> str:
    """The code cells of the notebook at `path`, joined into one script."""
    notebook = json.loads(path.read_text(encoding="utf-8"))
    return "\n\n".join(
        "".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"
    )


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_file():
        print("usage: python notebooks/run.py NOTEBOOK.ipynb", file=sys.stderr)
        return 2
    os.environ.setdefault("MPLBACKEND", "Agg")
    path = Path(argv[0])
    exec(compile(cells_as_script(path), str(path), "exec"), {"__name__": "__main__"})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
