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
#   inuse    apply onto a mounted LV and onto one held by device-mapper,
#            sync onto the snapshot's origin, its COW device and the data
#            source: all refused, every device unchanged
#
# For each case $RESULTS/<case>/ holds the commands' rc/out/err
# (send.*, apply.*, inspect.*) and sums.txt: "NAME SHA256" for the volumes
# compared. tests/suite/vm_delta.rs judges them.
#
# Exit status: 0 when every LVM step of the setup succeeded (what
# lvmsync-rs does is recorded, not judged here).

[ -f tests/vm/lib.sh ] || cd "$(dirname "$0")/../../.." || exit 1
. tests/vm/lib.sh
set -eu -o pipefail

VG=lvmsynctest
SIZE=48m

# A mix of changes: scattered chunks, a long run, zeroed ranges, text, the
# first and the last chunk.
change() {
    local dev=$1 size
    size=$(blockdev --getsize64 "$dev")
    for i in 3 17 18 101 777 2048 5000; do
        fill_range "$dev" $((i * 4096)) 4096 random
    done
    fill_range "$dev" $((8 * MiB)) $((4 * MiB)) random
    fill_range "$dev" $((20 * MiB)) $((1 * MiB)) zero
    fill_range "$dev" $((30 * MiB + 4096)) 4096 zero
    write_chunk "$dev" $((33 * MiB)) $((256 * KiB))
    fill_range "$dev" 0 4096 random
    fill_range "$dev" $((size - 4096)) 4096 random
}


make_vg "$VG" /dev/vda
make_origin "$VG" origin "$SIZE" fill
# Random data over part of the origin, so the backups start from more than
# a pattern.
fill_range /dev/$VG/origin $((2 * MiB)) $((6 * MiB)) random
for b in backup1 backup2 backup3; do
    make_origin "$VG" $b "$SIZE"
done

# ------------------------------------------------------ file and pipe
scenario_begin file
copy_dev /dev/$VG/origin /dev/$VG/backup1
copy_dev /dev/$VG/origin /dev/$VG/backup2
make_snapshot "$VG" origin snap1 16m 4k
SNAP=snap1
change /dev/$VG/origin
record_sum origin /dev/$VG/origin
record_sum backup-before /dev/$VG/backup1
step send "$LVMSYNC" send "$VG/snap1" -o "$SDIR/d1.delta"
step inspect "$LVMSYNC" inspect --json "$SDIR/d1.delta"
step apply "$LVMSYNC" apply "$SDIR/d1.delta" /dev/$VG/backup1
record_sum backup /dev/$VG/backup1

# A device smaller than the origin: refused before anything is written.
scenario_begin toosmall
make_origin "$VG" small 8m
fill_range /dev/$VG/small 0 $((8 * MiB)) random
record_sum before /dev/$VG/small
step apply "$LVMSYNC" apply "$RESULTS/file/d1.delta" /dev/$VG/small
record_sum after /dev/$VG/small

scenario_begin pipe
record_sum origin /dev/$VG/origin
step pipe bash -c '"$1" send "$2" -o - | "$1" apply - "$3"' _ "$LVMSYNC" "$VG/snap1" /dev/$VG/backup2
record_sum backup /dev/$VG/backup2
lvremove -q -y "$VG/snap1"

# ------------------------------------------- a later snapshot as the source
scenario_begin datasrc
copy_dev /dev/$VG/origin /dev/$VG/backup3
make_snapshot "$VG" origin snapA 16m 4k
SNAP=snapA
change /dev/$VG/origin
make_snapshot "$VG" origin snapB 16m 4k
# Written after snapB: the backup must not get these.
fill_range /dev/$VG/origin $((40 * MiB)) $((2 * MiB)) random
fill_range /dev/$VG/origin $((9 * MiB)) $((64 * KiB)) random
record_sum snapB /dev/$VG/snapB
record_sum origin /dev/$VG/origin
step send "$LVMSYNC" send "$VG/snapA" --data-source /dev/$VG/snapB -o "$SDIR/d2.delta"
step apply "$LVMSYNC" apply "$SDIR/d2.delta" /dev/$VG/backup3
record_sum backup /dev/$VG/backup3

# ------------------------------------- devices in use, and the delta's inputs
scenario_begin inuse
make_origin "$VG" mounted "$SIZE"
make_origin "$VG" held "$SIZE"
fill_range /dev/$VG/held 0 $((4 * MiB)) random
# Read-only and without journal replay, so that mounting changes nothing
# on the device and its sum before and after means what apply did.
modprobe ext4 2>/dev/null || true
mkfs.ext4 -q -F /dev/$VG/mounted
mkdir -p /tmp/lvmsync-mnt
record_sum mounted-before /dev/$VG/mounted
mount -o ro,noload /dev/$VG/mounted /tmp/lvmsync-mnt
step mounted "$LVMSYNC" apply "$RESULTS/file/d1.delta" /dev/$VG/mounted
umount /tmp/lvmsync-mnt
record_sum mounted-after /dev/$VG/mounted
record_sum held-before /dev/$VG/held
dmsetup create lvmsync-holder --table "0 $(blockdev --getsz /dev/$VG/held) linear /dev/$VG/held 0"
step held "$LVMSYNC" apply "$RESULTS/file/d1.delta" /dev/$VG/held
dmsetup remove lvmsync-holder
record_sum held-after /dev/$VG/held
# The snapshot's own devices and the data source as DEST.
record_sum origin-before /dev/$VG/origin
record_sum snapB-before /dev/$VG/snapB
record_sum cow-before "/dev/mapper/$(dm_name "$VG" snapA)-cow"
step origin "$LVMSYNC" sync "$VG/snapA" /dev/$VG/origin
step cow "$LVMSYNC" sync "$VG/snapA" "/dev/mapper/$(dm_name "$VG" snapA)-cow"
step datasource "$LVMSYNC" sync "$VG/snapA" --data-source /dev/$VG/snapB /dev/$VG/snapB
step backup-origin "$LVMSYNC" backup "$VG/origin" /dev/$VG/origin
record_sum origin-after /dev/$VG/origin
record_sum snapB-after /dev/$VG/snapB
record_sum cow-after "/dev/mapper/$(dm_name "$VG" snapA)-cow"
lvs --noheadings -o lv_name "$VG" > "$SDIR/lvs.txt"
