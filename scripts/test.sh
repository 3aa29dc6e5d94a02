#!/usr/bin/env bash
# The whole test suite, every tier: set up, then pytest (doctests included). The default
# `python -m pytest` is the fast loop (unit and integration, see pyproject's addopts); this
# runs acceptance too. Extra args go to pytest (a later -m replaces this one).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest circuitlens tests -m "unit or integration or acceptance" "$@"
