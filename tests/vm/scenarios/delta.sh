#!/bin/bash
# vm-options: --disks 1 --disk-size 1G
#
# Guest scenario script for `lvmsync-rs send` and `apply` on real LVM
# volumes: a backup LV is brought up to date through a delta, and must then
# hold exactly what the source holds.
#
#   file     send vg/snap -o FILE; apply FILE /dev/vg/backup
#   pipe     send vg/snap -o - | apply - /dev/vg/backup
#   toosmall apply onto a device smaller than the origin: refused, untouched
#   datasrc  send vg/snapA --data-source /dev/vg/snapB: the backup must equal
#            the later snapshot snapB, not the origin written after it
#
# For each case $RESULTS/<case>/ holds the commands' rc/out/err
# (send.*, apply.*, inspect.*) and sums.txt: "NAME SHA256" for the volumes
# compared. tests/vm_delta.rs judges them.
#
# Exit status: 0 when every LVM step of the setup succeeded (what
# lvmsync-rs does is recorded, not judged here).

[ -f tests/vm/lib.sh ] || cd "$(dirname "$0")/../../.." || exit 1
. tests/vm/lib.sh
set -eu -o pipefail

VG=lvmsynctest
SIZE=48m

# run TAG CMD...: runs CMD, saving TAG.out, TAG.err and TAG.rc in $SDIR.
run() {
    local tag=$1 rc=0
    shift
    echo "$*" > "$SDIR/$tag.cmd"
    timeout 300 "$@" > "$SDIR/$tag.out" 2> "$SDIR/$tag.err" < /dev/null || rc=$?
    echo "$rc" > "$SDIR/$tag.rc"
    log "$tag: rc=$rc"
}

sum() { echo "$1 $(sha256sum < "$2" | cut -d' ' -f1)" >> "$SDIR/sums.txt"; }

# fill DEV OFFSET LENGTH random|zero: O_DIRECT write of random bytes or zeroes.
fill() {
    local src=/dev/urandom
    [ "$4" = zero ] && src=/dev/zero
    dd if=$src of="$1" bs=64k iflag=fullblock,count_bytes count="$3" \
        oflag=direct,seek_bytes seek="$2" conv=fsync,notrunc status=none
}

# A mix of changes: scattered chunks, a long run, zeroed ranges, text, the
# first and the last chunk.
change() {
    local dev=$1 size
    size=$(blockdev --getsize64 "$dev")
    for i in 3 17 18 101 777 2048 5000; do
        fill "$dev" $((i * 4096)) 4096 random
    done
    fill "$dev" $((8 * MiB)) $((4 * MiB)) random
    fill "$dev" $((20 * MiB)) $((1 * MiB)) zero
    fill "$dev" $((30 * MiB + 4096)) 4096 zero
    write_chunk "$dev" $((33 * MiB)) $((256 * KiB))
    fill "$dev" 0 4096 random
    fill "$dev" $((size - 4096)) 4096 random
}

copy() { dd if="$1" of="$2" bs=1M iflag=direct oflag=direct conv=fsync status=none; }

make_vg "$VG" /dev/vda
make_origin "$VG" origin "$SIZE" fill
# Random data over part of the origin, so the backups start from more than
# a pattern.
fill /dev/$VG/origin $((2 * MiB)) $((6 * MiB)) random
for b in backup1 backup2 backup3; do
    make_origin "$VG" $b "$SIZE"
done

# ------------------------------------------------------ file and pipe
scenario_begin file
copy /dev/$VG/origin /dev/$VG/backup1
copy /dev/$VG/origin /dev/$VG/backup2
make_snapshot "$VG" origin snap1 16m 4k
SNAP=snap1
change /dev/$VG/origin
sum origin /dev/$VG/origin
sum backup-before /dev/$VG/backup1
run send "$LVMSYNC" send "$VG/snap1" -o "$SDIR/d1.delta"
run inspect "$LVMSYNC" inspect --json "$SDIR/d1.delta"
run apply "$LVMSYNC" apply "$SDIR/d1.delta" /dev/$VG/backup1
sum backup /dev/$VG/backup1

# A device smaller than the origin: refused before anything is written.
scenario_begin toosmall
make_origin "$VG" small 8m
fill /dev/$VG/small 0 $((8 * MiB)) random
sum before /dev/$VG/small
run apply "$LVMSYNC" apply "$RESULTS/file/d1.delta" /dev/$VG/small
sum after /dev/$VG/small

scenario_begin pipe
sum origin /dev/$VG/origin
run pipe bash -c '"$1" send "$2" -o - | "$1" apply - "$3"' _ "$LVMSYNC" "$VG/snap1" /dev/$VG/backup2
sum backup /dev/$VG/backup2
lvremove -q -y "$VG/snap1"

# ------------------------------------------- a later snapshot as the source
scenario_begin datasrc
copy /dev/$VG/origin /dev/$VG/backup3
make_snapshot "$VG" origin snapA 16m 4k
SNAP=snapA
change /dev/$VG/origin
make_snapshot "$VG" origin snapB 16m 4k
# Written after snapB: the backup must not get these.
fill /dev/$VG/origin $((40 * MiB)) $((2 * MiB)) random
fill /dev/$VG/origin $((9 * MiB)) $((64 * KiB)) random
sum snapB /dev/$VG/snapB
sum origin /dev/$VG/origin
run send "$LVMSYNC" send "$VG/snapA" --data-source /dev/$VG/snapB -o "$SDIR/d2.delta"
run apply "$LVMSYNC" apply "$SDIR/d2.delta" /dev/$VG/backup3
sum backup /dev/$VG/backup3
