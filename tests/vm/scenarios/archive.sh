#!/bin/bash
# vm-options: --disks 1 --disk-size 2G
#
# Guest scenario script for `lvmsync-rs backup` into an archive, `restore`
# and `archive prune|check|list` on real LVM volumes.
#
#   rounds   five backups of an origin into an archive (a directory), with
#            writes to the origin before each and, in rounds 3 to 5, a
#            writer that keeps writing during the backup; the sum of the
#            snapshot each round made.
#   restore  each of the five points restored onto a fresh LV; point 5
#            restored onto the LV that holds point 1 (only the difference);
#            point 2 restored onto the one that holds point 4 (going back);
#            point 3 onto a new file.
#   prune    prune to the last three points, check --read-data; points 3,
#            4 and 5 restored again (onto fresh LVs, and over the
#            difference); point 1 asked for: refused, naming the points.
#
# Each case's directory holds the commands' rc/out/err and sums.txt
# ("NAME SHA256"). tests/suite/vm_archive.rs judges them.

[ -f tests/vm/lib.sh ] || cd "$(dirname "$0")/../../.." || exit 1
. tests/vm/lib.sh
set -eu -o pipefail

VG=lvmsynctest
SIZE=48m
ARCHIVE=$RESULTS/archive
NAME=guest/vg/origin

# A mix of changes, different each time (random data, zeroes).
change() {
    local dev=$1 seed=$2
    for i in 3 17 101 777 2048 5000 $((seed * 97 % 9000 + 20)); do
        fill_range "$dev" $((i * 4096)) 4096 random
    done
    fill_range "$dev" $(((seed % 5) * 4 * MiB + 12 * MiB)) $((2 * MiB)) random
    fill_range "$dev" $((30 * MiB + seed * 64 * KiB)) $((256 * KiB)) zero
    fill_range "$dev" 0 4096 random
}

# writer DEV: keeps writing 64 KiB pieces at random offsets until killed.
writer() {
    local dev=$1 blocks
    blocks=$(( $(blockdev --getsize64 "$dev") / 65536 ))
    while :; do
        dd if=/dev/urandom of="$dev" bs=64k count=1 seek=$((RANDOM % blocks)) \
            oflag=direct conv=notrunc status=none
        sleep 0.1
    done
}

# newest_owned: the newest tool-owned snapshot of the origin.
newest_owned() {
    lvs --noheadings -o lv_name,origin,lv_tags --sort lv_time "$VG" |
        awk '$2 == "origin" && $3 ~ /lvmsync_rs_/ {print $1}' | tail -n 1
}

make_vg "$VG" /dev/vda
make_origin "$VG" origin "$SIZE" fill
fill_range /dev/$VG/origin $((2 * MiB)) $((6 * MiB)) random
mkdir -p "$ARCHIVE"

# ------------------------------------------------------------------ rounds
scenario_begin rounds
for r in 1 2 3 4 5; do
    change /dev/$VG/origin "$r"
    pid=
    if [ "$r" -ge 3 ]; then
        writer /dev/$VG/origin &
        pid=$!
    fi
    step "backup$r" "$LVMSYNC" backup --json --name "$NAME" --snapshot-size 16m "$VG/origin" "$ARCHIVE"
    [ -n "$pid" ] && { kill "$pid"; wait "$pid" || true; }
    snap=$(newest_owned)
    echo "$snap" > "$SDIR/snap$r.txt"
    record_sum "round$r" "/dev/$VG/$snap"
    record_sum "origin$r" /dev/$VG/origin
done
step list "$LVMSYNC" archive list --json "$ARCHIVE"

# ----------------------------------------------------------------- restore
scenario_begin restore
for r in 1 2 3 4 5; do
    make_origin "$VG" "r$r" "$SIZE"
    # Garbage first: the restore must overwrite all of it.
    fill_range "/dev/$VG/r$r" 0 $((8 * MiB)) random
    step "restore$r" "$LVMSYNC" restore --json "$ARCHIVE" "$NAME@$r" "/dev/$VG/r$r"
    record_sum "restored$r" "/dev/$VG/r$r"
done
# Forwards over the difference: r1 holds point 1.
step forward "$LVMSYNC" restore --json "$ARCHIVE" "$NAME@5" "/dev/$VG/r1"
record_sum forward "/dev/$VG/r1"
# Back over the difference: r4 holds point 4.
step back "$LVMSYNC" restore --json "$ARCHIVE" "$NAME@2" "/dev/$VG/r4"
record_sum back "/dev/$VG/r4"
step file "$LVMSYNC" restore --json --create "$ARCHIVE" "$NAME@3" "$SDIR/p3.img"
record_sum file "$SDIR/p3.img"
rm -f "$SDIR/p3.img" "$SDIR/p3.img.lvmsync-state"

# ------------------------------------------------------------------- prune
scenario_begin prune
step prune "$LVMSYNC" archive prune --json --keep-last 3 "$ARCHIVE"
step check "$LVMSYNC" archive check --json --read-data "$ARCHIVE"
step list "$LVMSYNC" archive list --json "$ARCHIVE" "$NAME"
for r in 3 4 5; do
    step "restore$r" "$LVMSYNC" restore --json --full "$ARCHIVE" "$NAME@$r" "/dev/$VG/r$r"
    record_sum "restored$r" "/dev/$VG/r$r"
done
# r2 holds point 2, which is gone: a whole restore.
step nobase "$LVMSYNC" restore --json "$ARCHIVE" "$NAME@4" "/dev/$VG/r2"
record_sum nobase "/dev/$VG/r2"
record_sum before1 "/dev/$VG/r1"
step pruned "$LVMSYNC" restore "$ARCHIVE" "$NAME@1" "/dev/$VG/r1"
record_sum after1 "/dev/$VG/r1"
find "$ARCHIVE" -type f | sort > "$SDIR/objects.txt"
