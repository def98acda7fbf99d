#!/usr/bin/env bash
# Runs inside the VM (tests/vm/thinpool.sh boots it): tarpool's thin-pool
# backend against the real kernel's dm-thin.
#   inside.sh TARPOOL BUCKETS [E2E_TEST_BINARY]
set -euo pipefail
T=$1
B=$2
E=${3:-}
HERE=$(cd "$(dirname "$0")" && pwd)
CHECK="python3 $HERE/check.py"
W=/run/tpvm
fail() { echo "vm: FAIL: $*" >&2; exit 1; }
step() { echo; echo "== $*"; }

modprobe dm-thin-pool
modprobe loop
modprobe ext4 2>/dev/null || true
mkdir -p $W
mount -t tmpfs -o size=3800M tmpfs $W
uname -r

# Writes a config for pool $1 and prints its path.
config() {
    cat > "$W/$1.toml" <<CFG
backend = "thinpool"
max_attempts = 2
retry_base_ms = 10
retry_cap_ms = 50
[thinpool]
pool = "$1"
volume_size = "4G"
CFG
    echo "$W/$1.toml"
}

tp() { local s=$1 c=$2; shift 2; "$T" --state-dir "$s" --config "$c" "$@"; }

# ---- 0. the worker's confinement on this kernel ----
if [ -n "$E" ]; then
    step "the confined worker on this kernel (Landlock ABI $(python3 -c 'import ctypes; print(ctypes.CDLL(None, use_errno=True).syscall(444, None, 0, 1))')): escapes denied or killed"
    mkdir -p $W/tmp
    set +e
    TMPDIR=$W/tmp "$E" --test-threads 1 worker:: 2>&1 | tee $W/worker.out
    rc=${PIPESTATUS[0]}
    set -e
    [ "$rc" = 0 ] || fail "the worker's confinement tests"
    grep -q "test result: ok. [1-9]" $W/worker.out || fail "no worker confinement test ran"
fi

# ---- 1. the exercise's bucket in miniature ----
step "families: 3 x 5 layers, layers 1-3 shared, in a 640 MB pool"
S=$W/fam; C=$(config tpfam)
tp $S $C pool init --data-size 640M --meta-size 64M
start=$(date +%s.%N)
tp $S $C run --once --jobs 2 --source "dir:$B/families" > $W/fam.out 2>&1 || { cat $W/fam.out; fail "run --once over the families"; }
end=$(date +%s.%N)
tp $S $C status
unique=$($CHECK field _sizes unique < "$B/expect.json")
used=$(tp $S $C pool status --json | $CHECK field usage data_used_bytes)
python3 -c "
u, used, t = $unique, $used, $end - $start
print(f'families: ready in {t:.1f} s; pool data used {used/1e6:.1f} MB for {u/1e6:.1f} MB of unique layer tars: {used/u:.2f} x (limit 1.6 x)')
assert used <= 1.6 * u, 'pool usage over 1.6 x the unique layer bytes'
"
n_layers=$(python3 -c "import sqlite3; print(sqlite3.connect('$S/state.db').execute(\"SELECT count(*) FROM thin_devices WHERE owner LIKE 'layer:%'\").fetchone()[0])")
[ "$n_layers" = 9 ] || fail "expected 9 layer devices (3 shared + 2 x 3 own), got $n_layers"
for f in a b c; do
    mkdir -p $W/m-$f
    tp $S $C activate fam$f --as act-$f --mount $W/m-$f > $W/act-$f.json
    $CHECK tree "$B/expect.json" fam$f $W/m-$f
    echo scribble > $W/m-$f/etc/written-by-$f
done
[ ! -e $W/m-a/etc/written-by-b ] || fail "activations share writes"
large_ms=$(for f in a b c; do $CHECK field elapsed_ms < $W/act-$f.json; done | paste -sd, | sed 's/,/, /g')
$CHECK consistent $S tpfam
for f in a b c; do tp $S $C deactivate act-$f > /dev/null; done
$CHECK consistent $S tpfam

# ---- 2. SIGKILL at every pool operation ----
step "SIGKILL at every pool operation, restart, reconcile"
cases=(
    "pool-before:create_thin" "pool-after:create_thin"
    "pool-before:activate" "pool-after:activate"
    "pool-before:mkfs" "pool-after:mkfs"
    "mid-layer"
    "pool-before:deactivate" "pool-after:deactivate"
    "pool-before:create_snap" "pool-after:create_snap"
    "pool-after:create_snap#2" "pool-after:activate#3"
    "after-layer#2"
    "pool-after:create_snap pool-before:delete"
    "pool-after:mkfs pool-after:delete"
)
# Each case gets its own state directory and pool; pools are made one at a
# time (loop devices), then the cases run two at a time.
for i in "${!cases[@]}"; do
    S=$W/crash$i; C=$(config tpc$i)
    mkdir -p $S && cp -r $W/fam/cache $S/cache
    tp $S $C pool init --data-size 96M --meta-size 8M > /dev/null
done
crash_case() {
    local i=$1 c=$2 S=$W/crash$1 P=tpc$1 C=$W/tpc$1.toml fp rc
    for fp in $c; do
        set +e
        TARPOOL_FAILPOINTS=$fp tp $S $C run --once --source "dir:$B/small" > $S/out 2>&1
        rc=$?
        set -e
        [ $rc = 137 ] || { cat $S/out; echo "$fp: expected SIGKILL (137), got $rc"; return 1; }
    done
    tp $S $C run --once --source "dir:$B/small" > $S/out 2>&1 || { cat $S/out; echo "$c: the run after the crash failed"; return 1; }
    if (( i % 4 == 0 )); then
        # The content too, for every fourth case.
        mkdir -p $S/m
        tp $S $C activate small --as a --mount $S/m > /dev/null || return 1
        $CHECK tree "$B/expect.json" small $S/m > /dev/null || return 1
        tp $S $C deactivate a > /dev/null || return 1
    fi
    echo -n "killed at [$c]: "
    $CHECK consistent $S $P
}
pids=()
for lane in 0 1; do
    (
        set -e
        for i in "${!cases[@]}"; do
            (( i % 2 == lane )) || continue
            crash_case $i "${cases[$i]}" > $W/case$i.log 2>&1 || { echo FAILED >> $W/case$i.log; exit 1; }
        done
    ) &
    pids+=($!)
done
crashed=0
for p in "${pids[@]}"; do wait $p || crashed=1; done
for i in "${!cases[@]}"; do cat $W/case$i.log 2>/dev/null || echo "case $i did not run"; done
[ $crashed = 0 ] || fail "a crash case failed"

# ---- 3. exhaustion and recovery; activation times ----
step "pool exhaustion and recovery"
S=$W/ex; C=$(config tpex)
mkdir -p $S && cp -r $W/fam/cache $S/cache
tp $S $C pool init --data-size 160M --meta-size 8M > /dev/null
tp $S $C run --once --source "dir:$B/small" > /dev/null 2>&1 || fail "small image"
set +e
tp $S $C run --once --source "dir:$B/big" > $S/big.out 2>&1
rc=$?
set -e
[ $rc = 1 ] || { cat $S/big.out; fail "the image bigger than the pool: exit $rc, expected 1"; }
reason=$(tp $S $C status --json | python3 -c "import json,sys; print([i for i in json.load(sys.stdin)['images'] if i['name']=='big'][0]['error'])")
echo "big failed: $reason"
case "$reason" in *"thin pool \`tpex\` is out of space"*) ;; *) fail "unclear reason: $reason";; esac
[ "$(echo "$reason" | wc -l)" = 1 ] || fail "the reason is not one line"
mkdir -p $S/m
tp $S $C activate small --as s --mount $S/m > $S/act-small.json
$CHECK tree "$B/expect.json" small $S/m
small_ms=$($CHECK field elapsed_ms < $S/act-small.json)
tp $S $C deactivate s > /dev/null
for k in 2 3; do
    tp $S $C activate small --as s$k --mount $S/m > $S/act-small.json
    small_ms="$small_ms, $($CHECK field elapsed_ms < $S/act-small.json)"
    tp $S $C deactivate s$k > /dev/null
done
tp $S $C gc
tp $S $C run --once --source "dir:$B/medium" > $S/med.out 2>&1 || { cat $S/med.out; fail "the pool is not usable after the failure and gc"; }
tp $S $C activate medium --as md --mount $S/m > /dev/null
$CHECK tree "$B/expect.json" medium $S/m
tp $S $C deactivate md > /dev/null
# The medium image's source changes: its old layer and snapshot are garbage.
mkdir -p $W/medium-src/images/medium
cp "$B/small/images/small/1.tar" $W/medium-src/images/medium/1.tar
tp $S $C run --once --source "dir:$W/medium-src" > $S/med2.out 2>&1 || { cat $S/med2.out; fail "the changed medium image"; }
tp $S $C gc --json > $S/gc.json
cat $S/gc.json
reclaimed=$($CHECK field reclaimed_data_bytes < $S/gc.json)
removed=$($CHECK field layers_removed < $S/gc.json)
echo "gc after the medium image changed: removed $removed layer(s), reclaimed $((reclaimed / 1048576)) MiB"
[ "$removed" = 1 ] || fail "gc should remove the medium image's old layer"
(( reclaimed > 30 * 1048576 )) || fail "gc reclaimed only $reclaimed bytes"
tp $S $C activate small --as s9 --mount $S/m > /dev/null
$CHECK tree "$B/expect.json" small $S/m
tp $S $C deactivate s9 > /dev/null
step "exec in a thin-pool activation"
tp $S $C run --once --source "dir:$B/shell" > $S/shell.out 2>&1 || { cat $S/shell.out; fail "the shell image"; }
tp $S $C activate shell --as sh1 > /dev/null
got=$(tp $S $C exec sh1 -- /bin/sh -c 'echo $$; hostname; cat /etc/marker; echo kept > /written; ls /proc/self > /dev/null && echo proc')
want=$(printf '1\nsh1\nshell image\nproc')
[ "$got" = "$want" ] || fail "exec in an unmounted activation printed: $got"
got=$(tp $S $C exec sh1 -- /bin/cat /written)
[ "$got" = kept ] || fail "a write in the activation was not kept: $got"
set +e; tp $S $C exec sh1 -- /bin/sh -c 'exit 7'; rc=$?; set -e
[ $rc = 7 ] || fail "exec exit status $rc, expected 7"
mkdir -p $S/msh
tp $S $C activate shell --as sh2 --mount $S/msh > /dev/null
# The activation's mount point is nosuid,nodev; the state directory private.
opts=$(awk -v m="$S/msh" '$2 == m { print $4 }' /proc/mounts)
case ",$opts," in *,nosuid,*) ;; *) fail "the thin activation is mounted without nosuid: $opts";; esac
case ",$opts," in *,nodev,*) ;; *) fail "the thin activation is mounted without nodev: $opts";; esac
[ "$(stat -c %a $S)" = 700 ] || fail "the state directory is $(stat -c %a $S), not 700"
[ "$(stat -c %a $S/state.db)" = 600 ] || fail "state.db is $(stat -c %a $S/state.db), not 600"
got=$(tp $S $C exec sh2 -- /bin/sh -c 'ls /written 2>&1; echo $$')
case "$got" in *"No such file"*1) ;; *) fail "activations are not separate: $got";; esac
tp $S $C deactivate sh2 > /dev/null
tp $S $C deactivate sh1 > /dev/null
echo "exec: pid 1, hostname, the image's root, writes kept per activation, exit status passed through"
# Under both OCI runtimes: root is not root (the thin activation id-mapped),
# the memory and pids limits hold, and a bundle runs under the runtime itself.
for rt in crun runc; do
    C2=$W/tpex-$rt.toml
    { echo "runtime = \"$rt\""; cat $C; } > $C2
    tp $S $C2 activate shell --as rt-$rt > /dev/null
    got=$(tp $S $C2 exec rt-$rt -- /bin/sh -c 'cat /proc/self/uid_map; echo x > /f; stat -c %u /f')
    want=$(printf '         0     524288      65536\n0')
    [ "$got" = "$want" ] || fail "$rt: the container's root: $got"
    set +e
    tp $S $C2 exec rt-$rt --memory 64M -- /bin/sh -c 'x=$(head -c 200000000 /dev/zero | tr "\0" a)'; rc=$?
    tp $S $C2 exec rt-$rt --pids 16 -- /bin/sh -c 'for i in $(seq 30); do sleep 1 & done; echo all started' > $S/pids.out 2>&1; prc=$?
    set -e
    [ $rc = 137 ] || fail "$rt: past --memory 64M: exit $rc, expected 137"
    [ $prc = 2 ] || { cat $S/pids.out; fail "$rt: --pids 16: exit $prc, expected 2"; }
    tp $S $C2 deactivate rt-$rt > /dev/null
    mkdir -p $S/mb-$rt
    tp $S $C2 activate shell --as mb-$rt --mount $S/mb-$rt > /dev/null
    tp $S $C2 bundle mb-$rt $W/bundle-$rt -- /bin/sh -c 'echo bundled $(hostname)' > /dev/null
    got=$($rt --root $W/rt-$rt run --bundle $W/bundle-$rt vm-$rt < /dev/null)
    [ "$got" = "bundled mb-$rt" ] || fail "$rt: the bundle printed: $got"
    tp $S $C2 deactivate mb-$rt > /dev/null
    [ ! -e $W/bundle-$rt ] || fail "$rt: the bundle outlived its activation"
    echo "exec under $rt: root is host uid 524288, killed past --memory 64M, --pids 16 holds, its bundle runs"
done
tp $S $C pool status
$CHECK consistent $S tpex

step "a full pool is not the image's fault: after gc, the next poll brings it to ready"
S=$W/re; C=$(config tpre)
mkdir -p $S && cp -r $W/fam/cache $S/cache
# Room for one 40 MB image (46 MiB of pool data), not two.
tp $S $C pool init --data-size 80M --meta-size 8M > /dev/null
R=$W/re-src/images
mkdir -p $R/first $R/second
cp "$B/medium/images/medium/1.tar" $R/first/1.tar
# The same files and one more: another 40 MB layer.
cp "$B/medium/images/medium/1.tar" $R/second/1.tar
tar --append -f $R/second/1.tar -C "$HERE" check.py
states() { python3 -c "import sqlite3; print(' '.join(f'{n}={s}/{k or \"\"}' for n, s, k in sqlite3.connect('$S/state.db').execute('SELECT name, state, failure_kind FROM images ORDER BY name')))"; }
set +e
tp $S $C run --once --jobs 1 --source "dir:$W/re-src" > $S/re1.out 2>&1; rc=$?
set -e
got=$(states)
echo "two images, room for one: $got"
case "$rc $got" in
    "1 first=ready/ second=failed/resource") fits=first ;;
    "1 first=failed/resource second=ready/") fits=second ;;
    *) cat $S/re1.out; fail "expected one image ready and one failed for lack of space (exit 1), got exit $rc: $got" ;;
esac
# The one that fitted changes into a small image: its 40 MB layer is
# garbage once gc runs.
cp "$B/small/images/small/1.tar" $R/$fits/1.tar
set +e
tp $S $C run --once --jobs 1 --source "dir:$W/re-src" > $S/re2.out 2>&1
set -e
tp $S $C gc > /dev/null
tp $S $C run --once --jobs 1 --source "dir:$W/re-src" > $S/re3.out 2>&1 \
    || { cat $S/re3.out; fail "after gc, the next poll did not bring the image to ready"; }
got=$(states)
[ "$got" = "first=ready/ second=ready/" ] || fail "after gc: $got"
echo "after gc, the next poll: $got"
$CHECK consistent $S tpre

step "activation time"
echo "activation (writable snapshot + node + mount), ms per activation, under TCG emulation:"
echo "  small image (2 layers, 40 files): $small_ms"
echo "  large images (5 layers, ~220 MB each): $large_ms"
echo
echo "vm: PASS"
