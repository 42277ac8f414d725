#!/usr/bin/env bash
# Every figure of docs/performance.md in one run, in the order the page gives them, both
# databases side by side; each bench's full output goes to a log of its own under
# bench-results/<UTC date-time>/ and a one-line verdict per bench to summary.txt.
#
#   bash bench/all.sh            # the full series (6 minutes on this machine kind on 2026-12-08)
#   bash bench/all.sh --quick    # shorter runs and a 200,000-row backfill, to try it out
#
# Run it on a quiet machine: `uptime` is printed before and after each bench, and the
# ingest bench measures its own ceiling, so a noisy neighbour shows in the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
quick=0
[[ "${1:-}" == "--quick" ]] && quick=1

out="bench-results/$(date -u +%Y-%m-%dT%H%M%SZ)"
mkdir -p "$out"
summary="$out/summary.txt"
echo "syncd benchmarks, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD)" | tee "$summary"

run() {  # run NAME COMMAND...: log the output, note the verdict
    local name=$1
    shift
    echo "== $name: $*" | tee -a "$summary"
    echo "   before: $(uptime)" >>"$summary"
    if "$@" >"$out/$name.log" 2>&1; then
        echo "   exit 0" >>"$summary"
    else
        echo "   exit $? (see $out/$name.log)" | tee -a "$summary"
    fi
    echo "   after: $(uptime)" >>"$summary"
    # the bench's own table and verdicts: the lines after its last "=== " heading
    awk '/^=== /{block=""} {block=block $0 "\n"} END{printf "%s", block}' "$out/$name.log" >>"$summary"
}

bash bench/setup.sh >"$out/setup.log" 2>&1
if ((quick)); then
    seconds=5 rows=200000
else
    seconds=10 rows=1000000
fi
run ingest "$PY" bench/ingest.py --seconds "$seconds" --route both
run ingest-normal "$PY" bench/ingest.py --seconds "$seconds" --db sqlite --durability normal --skip-ceiling
run dispatch "$PY" bench/dispatch.py --concurrency 64 --log-level warning
run latency "$PY" bench/latency.py --seconds "$((seconds / 2))" --drain 60
run idle-rss "$PY" bench/idle_rss.py
run report "$PY" bench/report.py --repeat 1
run backfill "$PY" bench/backfill.py --rows "$rows" --window-days all --timeout-minutes 20
echo "done: $out" | tee -a "$summary"
