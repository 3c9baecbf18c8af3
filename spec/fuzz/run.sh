#!/bin/sh
# Builds the libFuzzer targets and runs each for SECONDS (default 60):
#   spec/fuzz/run.sh [SECONDS] [OUTDIR]
# First every saved crash under spec/fuzz/<target>/regress/ is replayed
# (each must now pass), then the target fuzzes from its seeds in
# spec/fuzz/<target>/ (new inputs go to OUTDIR/corpus/<target>, crashes to
# OUTDIR/findings/<target>/). Prints executions and findings per target and
# exits non-zero when a regression fails or anything was found.
# `make test` runs it with a few seconds per target; `make fuzz` for longer.
set -u
SECONDS_EACH=${1:-60}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${2:-$ROOT/build-fuzz-run}
# Leaks are findings too; a slow input (10 s) is a finding.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:detect_stack_use_after_return=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1}"

mkdir -p "$OUT"
"$ROOT/spec/fuzz/build.sh" "$OUT" >"$OUT/build.log" 2>&1 || {
    cat "$OUT/build.log"
    echo "fuzz: build failed"
    exit 2
}

status=0
for src in "$ROOT"/spec/fuzz/*.c; do
    t=$(basename "$src" .c)
    seeds=$ROOT/spec/fuzz/$t
    mkdir -p "$seeds" "$OUT/corpus/$t" "$OUT/findings/$t"
    log=$OUT/$t.log

    regress=$(find "$seeds/regress" -type f 2>/dev/null | sort)
    if [ -n "$regress" ]; then
        # shellcheck disable=SC2086 # one argument per file
        if ! "$OUT/$t" -runs=1 $regress >"$OUT/$t.regress.log" 2>&1; then
            tail -30 "$OUT/$t.regress.log"
            echo "fuzz: $t: a regression input fails again ($OUT/$t.regress.log)"
            status=1
        fi
    fi

    rm -f "$OUT/findings/$t"/*
    "$OUT/$t" -max_len=65536 -timeout=10 -max_total_time="$SECONDS_EACH" -print_final_stats=1 \
        -artifact_prefix="$OUT/findings/$t/" "$OUT/corpus/$t" "$seeds" >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    found=$(find "$OUT/findings/$t" -type f | wc -l)
    corpus=$(find "$OUT/corpus/$t" -type f | wc -l)
    printf 'fuzz: %-10s %6ss  executions %10s  corpus %5s  findings %s\n' \
        "$t" "$SECONDS_EACH" "${execs:-?}" "$corpus" "$found"
    if [ "$rc" -ne 0 ] || [ "$found" -ne 0 ]; then
        grep -m1 -A12 'FUZZ FINDING\|ERROR: \|runtime error' "$log"
        ls "$OUT/findings/$t"
        echo "fuzz: $t: finding (log $log); save the input under spec/fuzz/$t/regress/"
        status=1
    fi
done
exit $status
