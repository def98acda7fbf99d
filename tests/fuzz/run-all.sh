#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS each, one after
# another, at nice 19, and prints a table of each run's coverage and runs:
#
#   tests/fuzz/run-all.sh SECONDS [TARGET...]
#
# Each target starts from its checked-in seeds (seeds/TARGET, read only;
# regenerate them with seeds.py) plus a scratch corpus, corpus/TARGET, that
# keeps what earlier runs found (not in git; FRESH=1 empties it first).
# Crashes go to artifacts/TARGET/; full logs to target/fuzz-logs/TARGET.log.
# Columns: seeds, seed-cov (edges once the corpora are loaded: libFuzzer's
# INITED line), cov (edges at the end), runs (executions), result.
# Needs a nightly toolchain and cargo-fuzz (cargo install cargo-fuzz).
# Exit status: 1 if any target crashed or failed to run.
set -u
secs=${1:?usage: tests/fuzz/run-all.sh SECONDS [TARGET...]}
shift
cd "$(dirname "$0")"
if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir .)
fi
logs=target/fuzz-logs
mkdir -p "$logs"
nice -n 19 cargo +nightly fuzz build --fuzz-dir . || exit 1
bin=target/$(rustc +nightly -vV | sed -n 's/^host: //p')/release

rows=()
status=0
for t in "${targets[@]}"; do
    [ -d "seeds/$t" ] || { echo "no seeds/$t (run seeds.py)" >&2; exit 1; }
    [ "${FRESH:-0}" = 1 ] && rm -rf "corpus/$t"
    mkdir -p "corpus/$t" "artifacts/$t"
    log="$logs/$t.log"
    echo "== $t: $secs s (log: tests/fuzz/$log)" >&2
    # The binary cargo fuzz built, run directly: what runs is what was
    # built at the start, whatever changes meanwhile.
    nice -n 19 "$bin/$t" -artifact_prefix="artifacts/$t/" -max_total_time="$secs" \
        -print_final_stats=1 "corpus/$t" "seeds/$t" >"$log" 2>&1
    rc=$?
    seeds=$(find "seeds/$t" -type f | wc -l)
    # libFuzzer status lines: "#RUNS  INITED cov: EDGES ft: ..."
    inited=$(grep -m1 -oE 'INITED cov: [0-9]+' "$log" | grep -oE '[0-9]+$')
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+$')
    runs=$(grep -oE '^Done [0-9]+ runs' "$log" | grep -oE '[0-9]+')
    [ -n "$runs" ] || runs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
    if [ $rc -eq 0 ]; then
        result=ok
    else
        status=1
        art=$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -1 | awk '{print $NF}')
        result="FAILED (exit $rc${art:+, $art})"
    fi
    rows+=("$(printf '%-16s %6s %10s %10s %12s  %s' "$t" "$seeds" "${inited:-?}" "${cov:-?}" "${runs:-?}" "$result")")
done

printf '%-16s %6s %10s %10s %12s  %s\n' target seeds seed-cov cov runs result
printf '%s\n' "${rows[@]}"
exit $status
