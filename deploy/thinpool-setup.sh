#!/usr/bin/env bash
# Creates a device-mapper thin pool for tarpool with dmsetup, for operators
# who prefer to own the pool (tarpool then uses it by name: [thinpool] pool).
#
#   deploy/thinpool-setup.sh NAME DATA_DEV META_DEV [BLOCK_SIZE_KIB] [LOW_WATER_MIB]
#   deploy/thinpool-setup.sh NAME --files DIR DATA_SIZE META_SIZE [BLOCK_SIZE_KIB]
#
# The first form uses two block devices (e.g. LVs or partitions); the second
# makes sparse files in DIR and attaches loop devices (for trials). The
# metadata device's first 4 KiB are zeroed, so the kernel formats it.
#
# Features: skip_block_zeroing (zeroing 64 KiB+ blocks on first write makes
# extraction far slower; tarpool never reads a block it did not write, but
# a new thin device may then see stale bytes of deleted ones: keep the pool
# for tarpool alone), error_if_no_space (a full pool fails writes at once
# instead of queueing them for 60 s; tarpool then fails the image in flight
# with a clear reason). Re-run the same command after a reboot: the table is
# loaded over the existing metadata.
set -euo pipefail
die() { echo "thinpool-setup: $*" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "must run as root"
modprobe dm-thin-pool 2>/dev/null || true
NAME=${1:?pool name}
if [ "${2:-}" = --files ]; then
    DIR=${3:?dir}; DATA_SIZE=${4:?data size, e.g. 20G}; META_SIZE=${5:?meta size, e.g. 256M}; BLOCK_KIB=${6:-64}
    mkdir -p "$DIR"
    [ -e "$DIR/data.img" ] || truncate -s "$DATA_SIZE" "$DIR/data.img"
    [ -e "$DIR/meta.img" ] || truncate -s "$META_SIZE" "$DIR/meta.img"
    attach() { losetup -j "$1" | cut -d: -f1 | grep . || losetup --find --show "$1"; }
    DATA=$(attach "$DIR/data.img"); META=$(attach "$DIR/meta.img")
    LOW_MIB=256
else
    DATA=${2:?data device}; META=${3:?metadata device}; BLOCK_KIB=${4:-64}; LOW_MIB=${5:-256}
    if [ "$(dd if="$META" bs=4096 count=1 2>/dev/null | tr -d '\0' | wc -c)" != 0 ] \
        && ! thin_check "$META" >/dev/null 2>&1; then
        die "$META holds something that is not thin-pool metadata; zero its first 4 KiB yourself if it may go"
    fi
fi
(( BLOCK_KIB % 64 == 0 )) || die "the block size must be a multiple of 64 KiB"
SECTORS=$(blockdev --getsz "$DATA")
BLOCK_SECTORS=$(( BLOCK_KIB * 2 ))
LOW_WATER=$(( LOW_MIB * 1024 / BLOCK_KIB ))
dmsetup info "$NAME" >/dev/null 2>&1 && die "a device named $NAME exists already"
dmsetup create "$NAME" --table \
    "0 $SECTORS thin-pool $META $DATA $BLOCK_SECTORS $LOW_WATER 2 skip_block_zeroing error_if_no_space"
dmsetup status "$NAME"
echo "thinpool-setup: pool $NAME ready; set [thinpool] pool = \"$NAME\" and backend = \"thinpool\""
