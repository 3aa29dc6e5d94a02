#!/usr/bin/env bash
# The answer's confirmatory runs (configs/answer/*.toml), carried over sessions.
#
#   bash benchmarks/answer_runs.sh start    # each task's run in the background, one core each
#   bash benchmarks/answer_runs.sh status   # the last line of each log, the cells finished
#   bash benchmarks/answer_runs.sh export   # benchmarks/results/answer-<task>.json (commit it)
#
# `start` puts a run directory back from its export when it is missing (a new machine), then
# resumes it: `circuitlens run` computes only the cells not yet finished. The runs are started
# from a detached worktree (runs/answer-code) of one pinned commit (CODE_COMMIT below): every
# confirmatory cell is computed by the same code, whatever the package becomes meanwhile
# (pinned at 8d755ef, from before the first seed cell; the earlier lr grid points ran on the
# library refactor's commits, each checked bit-identical in training. Override with
# ANSWER_CODE=<commit> only to fix a run that cannot go on, and say so with the result).
# Logs: runs/answer-<task>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY="$ROOT/.venv/bin/python"
TASKS=(entity-tracking theory-of-mind)
CODE_COMMIT=${ANSWER_CODE:-8d755ef}

case "${1:-status}" in
start)
    CODE="$ROOT/runs/answer-code"
    git worktree remove --force "$CODE" 2>/dev/null || rm -rf "$CODE"
    git worktree prune
    git worktree add --detach "$CODE" "$CODE_COMMIT" >/dev/null
    for t in "${TASKS[@]}"; do
        dir="$ROOT/runs/answer-$t"
        if pgrep -f -- "--out $dir\$" >/dev/null; then
            echo "answer-$t: already running"
            continue
        fi
        if [ ! -d "$dir" ]; then
            "$PY" benchmarks/export_run.py --restore "answer-$t" "$dir"
        fi
        (cd "$CODE" && OMP_NUM_THREADS=1 nohup setsid "$PY" -m circuitlens run \
            "configs/answer/$t.toml" --out "$dir" >"$ROOT/runs/answer-$t.log" 2>&1 &)
        echo "answer-$t: started (log runs/answer-$t.log)"
    done
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
    echo "usage: $0 start|status|export" >&2
    exit 2
    ;;
esac
