#!/usr/bin/env bash
# The main job on the embedded default: set up, then the paper's comparison in its quick
# setting (both tasks, every condition, one seed) with progress bars; the table is printed at
# the end with the path of the HTML report. Extra arguments go to `circuitlens reproduce`
# (e.g. drop --quick's defaults with a full run: `.venv/bin/circuitlens reproduce`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/circuitlens reproduce --quick "$@"
