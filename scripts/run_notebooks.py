"""Execute the notebooks top to bottom in the full setting and save them with their outputs, so
that they read on a code host (GitHub shows the printed tables and a static picture of each
Plotly figure; Jupyter shows the interactive figure).

    .venv/bin/python scripts/run_notebooks.py                 # all of notebooks/*.ipynb
    .venv/bin/python scripts/run_notebooks.py notebooks/01_quickstart.ipynb

Each notebook is written atomically only after every cell ran without an error; a failing cell
leaves the committed file as it was and exits non-zero. The static pictures need kaleido and a
Chromium (``scripts/setup.sh`` installs both); without them the figures are saved interactive
only, and the script says so.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import nbclient
import nbformat

ROOT = Path(__file__).resolve().parent.parent


def _renderer() -> str:
    """Plotly renderers for the saved outputs: the figure as JSON (interactive in Jupyter), a
    page that loads plotly.js from its CDN (nbviewer), and a PNG when kaleido can draw one."""
    base = "plotly_mimetype+notebook_connected"
    try:
        import kaleido  # noqa: F401
    except ImportError:
        print("[notebooks] kaleido is not installed: figures are saved without a static picture")
        return base
    if not (shutil.which("chromium") or os.environ.get("BROWSER_PATH")):
        print("[notebooks] no Chromium found: figures are saved without a static picture")
        return base
    return base + "+png"


def run(path: Path, timeout: int = 1800) -> float:
    """Execute ``path`` in a fresh kernel (this interpreter) and save it in place; seconds."""
    nb = nbformat.read(path, as_version=4)
    env = {"CIRCUITLENS_SMALL": "0", "PLOTLY_RENDERER": _renderer()}
    if shutil.which("chromium") and "BROWSER_PATH" not in os.environ:
        env["BROWSER_PATH"] = shutil.which("chromium") or ""
    os.environ.update(env)
    client = nbclient.NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    t0 = time.time()
    client.execute()  # raises CellExecutionError on the first failing cell: nothing is written
    seconds = time.time() - t0
    nb.metadata["circuitlens"] = {
        "executed_by": "scripts/run_notebooks.py",
        "setting": "full",
        "seconds": round(seconds, 1),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        nbformat.write(nb, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path)
    args = parser.parse_args(argv)
    paths = args.paths or sorted((ROOT / "notebooks").glob("*.ipynb"))
    for p in paths:
        print(f"[notebooks] running {p.name} ...", flush=True)
        try:
            seconds = run(p)
        except nbclient.exceptions.CellExecutionError as e:
            print(f"[notebooks] {p.name} failed; the file is unchanged:\n{e}", file=sys.stderr)
            return 1
        print(f"[notebooks] {p.name}: {seconds:.0f} s, saved with outputs", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
