#!/usr/bin/env bash
# The answer's confirmatory runs (configs/answer/*.toml), carried over sessions.
#
#   bash benchmarks/answer_runs.sh start    # each task's run in the background, one core each
#   bash benchmarks/answer_runs.sh status   # the last line of each log, the cells finished
#   bash benchmarks/answer_runs.sh export   # benchmarks/results/answer-<task>.json (commit it;
#                                           # its report page too once its last cell is in)
#
# When one task's cells are all finished, `start` puts the other's pending seeds on both cores:
# the upper half in runs/answer-<task>-b (a copy of the run's config, setup and lr choices: a
# cell there is the cell the task's directory would compute, as the verification runs of a
# copied directory found), chosen once (runs/answer-<task>-b.seeds); `start` and `export` copy
# its finished cells into the task's directory first.
#   bash benchmarks/answer_runs.sh stop     # stop both (a cell resumes from its last checkpoint)
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
# (a number: 8d755ef; null: d1f0eca or later). Then at d01725b from 2026-12-07 16:48 UTC: the
# teacher's outputs computed 25 steps at a time as training reaches them, and a cache file
# read by a run resumed in the middle of a seed (entity tracking's CE seed 1 cell recomputed
# at d01725b: every field equal but circuit_accuracy and seconds). Override with ANSWER_CODE=<commit> only to fix a run
# that cannot go on, and say so with the result.
# ANSWER_ONLY=<task> bash benchmarks/answer_runs.sh start: that task alone, its pending seeds
# on both cores as above (the other task waits; its checkpoints stay), to bring one task's
# result in sooner at the same total pace (from 2026-12-08 02:05 UTC for entity tracking).
# Logs: runs/answer-<task>.log. ANSWER_DRY=1 starts no process (it prints what `start` would
# start, and splits and merges as `start` does: tests/experiments/test_answer_runs.py);
# ANSWER_PY= names the Python (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${ANSWER_PY:-$ROOT/.venv/bin/python}
DRY=${ANSWER_DRY:-}
TASKS=(entity-tracking theory-of-mind)
CODE_COMMIT=${ANSWER_CODE:-d01725b}

launch() {  # launch TASK DIR LOGNAME [SEED...]: resume the run in DIR (only SEEDs, if given)
    local t=$1 dir=$2 log=$3
    shift 3
    local seeds=()
    [ $# -gt 0 ] && seeds=(--seeds "$@")
    if [ -n "$DRY" ]; then
        echo "$log: would start${seeds[*]:+ (${seeds[*]})}"
        return
    fi
    # `&` on the command alone: backgrounding `cd && ...` forks a shell that keeps the
    # caller's stdout open until the run ends (`answer_runs.sh start | tail` then hangs).
    # `set -m`: without job control bash starts a background command with SIGINT ignored,
    # and `stop`'s Ctrl-C (the CLI's interrupt: its message, exit 130) would never reach it
    (set -m; cd "$ROOT/runs/answer-code" || exit; OMP_NUM_THREADS=1 nohup setsid "$PY" -m circuitlens \
        run "configs/answer/$t.toml" --out "$dir" --no-circuit-only "${seeds[@]}" \
        >"$ROOT/runs/$log.log" 2>&1 </dev/null &)
    echo "$log: started${seeds[*]:+ (${seeds[*]})} (log runs/$log.log)"
}

pending_seeds() {  # pending_seeds TASK...: "TASK SEED..." a line each, the seeds of the
    # task's run with a trained condition's cell not finished (one Python for every task)
    "$PY" - "$ROOT/runs" "$@" <<'PYEOF'
import json
import sys
from pathlib import Path

from circuitlens.experiments.config import UNTRAINED

runs, *tasks = sys.argv[1:]
for t in tasks:
    d = Path(runs) / f"answer-{t}"
    cfg = json.loads((d / "config.json").read_text())
    (task,) = cfg["tasks"]
    trained = [c for c in cfg["conditions"] if c not in UNTRAINED]
    done = lambda c, s: (d / task / c / f"seed{s}" / "cell.json").is_file()  # noqa: E731
    print(t, *(s for s in cfg["seeds"] if not all(done(c, s) for c in trained)))
PYEOF
}

split_seeds() {  # split_seeds TASK SEED...: the second directory's seeds, chosen once
    local t=$1 src="$ROOT/runs/answer-$1" b="$ROOT/runs/answer-$1-b" task=${1//-/_}
    shift
    [ -f "$b.seeds" ] && return
    local p=("$@") half=$((($# + 1) / 2))
    mkdir -p "$b/$task"
    cp "$src/config.json" "$src/.circuitlens-run" "$b/"
    for f in setup.json lr.json sweeps.json; do
        if [ -f "$src/$task/$f" ]; then cp "$src/$task/$f" "$b/$task/"; fi
    done
    echo "${p[*]:$half}" >"$b.seeds.tmp" && mv "$b.seeds.tmp" "$b.seeds"
}

merge() {  # copy the second directory's finished cells into the task's directory
    local b="$ROOT/runs/answer-$1-b" f rel
    [ -d "$b" ] || return 0
    while IFS= read -r f; do
        rel=${f#"$b/"}
        [ -f "$ROOT/runs/answer-$1/$rel" ] && continue
        mkdir -p "$(dirname "$ROOT/runs/answer-$1/$rel")"
        cp "$f" "$ROOT/runs/answer-$1/$rel.tmp" && mv "$ROOT/runs/answer-$1/$rel.tmp" "$ROOT/runs/answer-$1/$rel"
    done < <(find "$b" -name cell.json)
}

case "${1:-status}" in
start)
    # a running run imports from the worktree: never replace it under one
    if [ -z "$DRY" ]; then
        if pgrep -f -- "circuitlens run configs/answer/" >/dev/null; then
            echo "a run is going (stop it first: $0 stop)" >&2
            exit 1
        fi
        CODE="$ROOT/runs/answer-code"
        git worktree remove --force "$CODE" 2>/dev/null || rm -rf "$CODE"
        git worktree prune
        git worktree add --detach "$CODE" "$CODE_COMMIT" >/dev/null
    fi
    for t in "${TASKS[@]}"; do
        dir="$ROOT/runs/answer-$t"
        if [ ! -d "$dir" ]; then
            "$PY" benchmarks/export_run.py --restore "answer-$t" "$dir"
        fi
        merge "$t"
    done
    declare -A PENDING
    open=()  # the tasks with cells pending, in TASKS' order
    while read -r t seeds; do
        if [ -n "$seeds" ]; then PENDING[$t]=$seeds open+=("$t"); fi
    done < <(pending_seeds "${TASKS[@]}")
    if [ -n "${ANSWER_ONLY:-}" ]; then  # one task alone, on both cores
        if [[ " ${TASKS[*]} " != *" $ANSWER_ONLY "* ]]; then
            echo "ANSWER_ONLY=$ANSWER_ONLY: no such task (one of: ${TASKS[*]})" >&2
            exit 2
        fi
        if [ -z "${PENDING[$ANSWER_ONLY]:-}" ]; then
            echo "answer-$ANSWER_ONLY: every cell is finished (start without ANSWER_ONLY)" >&2
            exit 1
        fi
        open=("$ANSWER_ONLY")
    fi
    for t in "${open[@]}"; do
        dir="$ROOT/runs/answer-$t"
        if [ ${#open[@]} -eq 1 ]; then
            # one task left: its pending seeds on both cores, the upper half in a second
            # directory (answer-<task>-b, the same config, setup and lr choices; its cells
            # are copied into the task's directory by `export` and `start`). The split is
            # written once (runs/answer-<task>-b.seeds), so a seed is never begun in both.
            # shellcheck disable=SC2086  # the seeds, one word each
            split_seeds "$t" ${PENDING[$t]}
            hi=" $(cat "$dir-b.seeds") "
            lo=() upper=()
            for s in ${PENDING[$t]}; do
                if [[ $hi == *" $s "* ]]; then upper+=("$s"); else lo+=("$s"); fi
            done
            if [ ${#lo[@]} -gt 0 ]; then launch "$t" "$dir" "answer-$t" "${lo[@]}"; fi
            if [ ${#upper[@]} -gt 0 ]; then
                launch "$t" "$dir-b" "answer-$t-b" "${upper[@]}"
            fi
        else
            launch "$t" "$dir" "answer-$t"
        fi
    done
    if [ ${#open[@]} -eq 0 ]; then echo "every cell of both tasks is finished"; fi
    ;;
stop)
    # Ctrl-C, as `launch` lets it through; SIGTERM after a minute for a run that ignores it
    # (one started before 2026-12-08, when `launch` left SIGINT ignored). Either loses the
    # same: the steps since the cell's last checkpoint (every 50 steps)
    pkill -INT -f -- "circuitlens run configs/answer/" || true
    for _ in $(seq 60); do
        pgrep -f -- "circuitlens run configs/answer/" >/dev/null || break
        sleep 1
    done
    pkill -TERM -f -- "circuitlens run configs/answer/" || true
    while pgrep -f -- "circuitlens run configs/answer/" >/dev/null; do sleep 1; done
    echo "stopped"
    ;;
status)
    for t in "${TASKS[@]}"; do
        for d in "answer-$t" "answer-$t-b"; do
            [ -d "runs/$d" ] || continue
            n=$(find "runs/$d" -name cell.json 2>/dev/null | wc -l)
            echo "$d: $n cells finished"
            [ -f "runs/$d.log" ] && tail -c 200 "runs/$d.log" | tr '\r' '\n' | tail -1
        done
    done
    ;;
export)
    # a task with cells pending is exported as its cells alone: its table and report page
    # (test accuracies, the contrasts) are written at its last cell, as the answer's page is
    for t in "${TASKS[@]}"; do merge "$t"; done
    while read -r t seeds; do
        "$PY" benchmarks/export_run.py --report "$([ -n "$seeds" ] && echo none || echo html)" \
            "runs/answer-$t" "answer-$t"
    done < <(pending_seeds "${TASKS[@]}")
    ;;
*)
    echo "usage: $0 start|stop|status|export" >&2
    exit 2
    ;;
esac
