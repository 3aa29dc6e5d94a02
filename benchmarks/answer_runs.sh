#!/usr/bin/env bash
# The answer's confirmatory runs (configs/answer/*.toml), carried over sessions.
#
#   bash benchmarks/answer_runs.sh start    # each task's run in the background, one core each
#   bash benchmarks/answer_runs.sh status   # the last line of each log, the cells finished
#   bash benchmarks/answer_runs.sh export   # benchmarks/results/answer-<task>.json (commit it)
#   bash benchmarks/answer_runs.sh stop     # interrupt both (a cell resumes from its checkpoint)
#
# `start` puts a run directory back from its export when it is missing (a new machine), then
# resumes it: `circuitlens run` computes only the cells not yet finished. The runs are started
# from a detached worktree (runs/answer-code) of one pinned commit (CODE_COMMIT below): every
# confirmatory cell is computed by the same code, whatever the package becomes meanwhile.
# Pinned first at 8d755ef (before the first seed cell; the earlier lr grid points ran on the
# library refactor's commits, each checked bit-identical in training), then at d1f0eca from
# 2026-12-07 14:10 UTC: the same code plus `--no-circuit-only`, which skips the circuit-only
# accuracy (34% of a cell's time; no measure of the design) and changes no other field of a
# cell bit for bit (entity tracking's CE seed 0 cell recomputed at d1f0eca: every field equal
# but circuit_accuracy, seconds, resumed). A cell's circuit_accuracy says which code ran it
# (a number: 8d755ef; null: d1f0eca or later). Then at d01725b from 2026-12-07 16:40 UTC: the
# teacher's outputs computed 25 steps at a time as training reaches them, and a cache file
# read by a run resumed in the middle of a seed (entity tracking's CE seed 1 cell recomputed
# at d01725b: every field equal but circuit_accuracy and seconds). Override with ANSWER_CODE=<commit> only to fix a run
# that cannot go on, and say so with the result.
# Logs: runs/answer-<task>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY="$ROOT/.venv/bin/python"
TASKS=(entity-tracking theory-of-mind)
CODE_COMMIT=${ANSWER_CODE:-d01725b}

case "${1:-status}" in
start)
    # a running run imports from the worktree: never replace it under one
    if pgrep -f -- "circuitlens run configs/answer/" >/dev/null; then
        echo "a run is going (stop it first: $0 stop)" >&2
        exit 1
    fi
    CODE="$ROOT/runs/answer-code"
    git worktree remove --force "$CODE" 2>/dev/null || rm -rf "$CODE"
    git worktree prune
    git worktree add --detach "$CODE" "$CODE_COMMIT" >/dev/null
    for t in "${TASKS[@]}"; do
        dir="$ROOT/runs/answer-$t"
        if [ ! -d "$dir" ]; then
            "$PY" benchmarks/export_run.py --restore "answer-$t" "$dir"
        fi
        (cd "$CODE" && OMP_NUM_THREADS=1 nohup setsid "$PY" -m circuitlens run \
            "configs/answer/$t.toml" --out "$dir" --no-circuit-only >"$ROOT/runs/answer-$t.log" 2>&1 &)
        echo "answer-$t: started (log runs/answer-$t.log)"
    done
    ;;
stop)
    pkill -INT -f -- "circuitlens run configs/answer/" || true
    while pgrep -f -- "circuitlens run configs/answer/" >/dev/null; do sleep 1; done
    echo "stopped"
    ;;
status)
    for t in "${TASKS[@]}"; do
        dir="runs/answer-$t"
        n=$(find "$dir" -name cell.json 2>/dev/null | wc -l)
        echo "answer-$t: $n cells finished"
        [ -f "runs/answer-$t.log" ] && tail -c 200 "runs/answer-$t.log" | tr '\r' '\n' | tail -1
    done
    ;;
export)
    for t in "${TASKS[@]}"; do
        "$PY" benchmarks/export_run.py "runs/answer-$t" "answer-$t"
    done
    ;;
*)
    echo "usage: $0 start|stop|status|export" >&2
    exit 2
    ;;
esac
