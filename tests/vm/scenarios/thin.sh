#!/bin/bash
# vm-options: --disks 1 --disk-size 1G
#
# Guest scenario script for thin snapshots: a backup LV is brought up to
# date from a thin snapshot, through `send`/`apply` and through `sync`, and
# must then hold exactly what its source holds. The pool's metadata
# snapshot must be free again after success, after errors and after a
# signal.
#
#   chunk64k  pool with 64 KiB blocks: scattered writes, runs, writes across
#             block boundaries, writes into blocks unmapped in the snapshot,
#             a discarded range; list, send -o FILE, inspect, apply
#   sync      the same snapshot through `lvmsync-rs SNAPSHOT DEST` (local DEST)
#   datasrc   send snapA --data-source snapB (a later thin snapshot, the
#             origin written after it): the backup must equal snapB; and
#             --data-source naming the origin itself
#   chunk1m   pool with 1 MiB blocks: send -o - | apply -
#   snapsnap  a snapshot of a snapshot, the first snapshot written to
#   errors    refusals: held metadata snapshot (left held), thin_delta
#             failing or printing garbage (released), a plain thin LV, an
#             inactive snapshot, data sources of another pool or unrelated
#   signals   SIGINT and SIGTERM while thin_delta runs: released, exit 130/143
#
# For each case $RESULTS/<case>/ holds the commands' cmd/rc/out/err,
# sums.txt ("NAME SHA256"), held.txt ("WHEN HELD-ROOT" of the pool) and
# facts.txt ("KEY VALUE"). tests/suite/vm_thin.rs judges them.
#
# Exit status: 0 when every LVM step of the setup succeeded (what
# lvmsync-rs does is recorded, not judged here).

[ -f tests/vm/lib.sh ] || cd "$(dirname "$0")/../../.." || exit 1
. tests/vm/lib.sh
set -eu -o pipefail

VG=thintest
SIZE=32m

fact() { echo "$1 $2" >> "$SDIR/facts.txt"; }

# held POOL: the pool's held metadata root ("-" when none is held).
held() { dmsetup status "$VG-$1-tpool" | awk '{ print $7 }'; }
note_held() { echo "$1 $(held "$2")" >> "$SDIR/held.txt"; }

thin_id() { lvs --noheadings -o thin_id "$VG/$1" | tr -d ' '; }


# make_pool POOL CHUNK: a thin pool of 200 MiB.
make_pool() {
    lvcreate -q -y --type thin-pool -L 200m -c "$2" --poolmetadatasize 4m -n "$1" "$VG"
}

# make_thin POOL LV: a thin LV of $SIZE, filled with the baseline pattern
# and random data, with a range left unmapped (discarded).
make_thin() {
    lvcreate -q -y -V "$SIZE" --thinpool "$1" -n "$2" "$VG"
    local dev=/dev/$VG/$2 bytes
    bytes=$(blockdev --getsize64 "$dev")
    dd if="$(baseline_file "$bytes")" of="$dev" bs=1M count="$((bytes / MiB))" \
        iflag=fullblock oflag=direct conv=fsync,notrunc status=none
    fill_range "$dev" $((2 * MiB)) $((3 * MiB)) random
    blkdiscard -o $((24 * MiB)) -l $((4 * MiB)) "$dev"
}

# snapshot LV SNAP: a thin snapshot, activated.
snapshot() {
    lvcreate -q -y -s -n "$2" "$VG/$1"
    lvchange -q -ay -K "$VG/$2"
}

# change DEV BLOCK: scattered writes, a run, writes across BLOCK
# boundaries, writes into the unmapped range, a discarded range, zeroes.
change() {
    local dev=$1 bs=$2 size
    size=$(blockdev --getsize64 "$dev")
    for i in 3 17 18 101 777 2048 5000; do
        fill_range "$dev" $((i * 4096)) 4096 random
    done
    fill_range "$dev" $((8 * MiB)) $((2 * MiB)) random
    fill_range "$dev" $((4 * bs - 4096)) 8192 random
    fill_range "$dev" $((12 * MiB - 512)) 1024 random
    fill_range "$dev" $((25 * MiB)) $((64 * KiB)) random
    fill_range "$dev" $((14 * MiB)) $((64 * KiB)) zero
    write_chunk "$dev" $((16 * MiB)) $((256 * KiB))
    blkdiscard -o $((18 * MiB)) -l $((2 * MiB)) "$dev"
    fill_range "$dev" 0 4096 random
    fill_range "$dev" $((size - 4096)) 4096 random
}

make_vg "$VG" /dev/vda
for b in backup1 backup2 backup3 backup4 backup5; do
    make_origin "$VG" $b "$SIZE"
done

# ------------------------------------------------------------ 64 KiB blocks
scenario_begin chunk64k
make_pool pool64 64k
make_thin pool64 origin
copy_dev /dev/$VG/origin /dev/$VG/backup1
copy_dev /dev/$VG/origin /dev/$VG/backup2
snapshot origin snap1
change /dev/$VG/origin $((64 * KiB))
fact snap_id "$(thin_id snap1)"
fact origin_id "$(thin_id origin)"
fact origin_size "$(blockdev --getsize64 /dev/$VG/origin)"
record_sum origin /dev/$VG/origin
record_sum backup-before /dev/$VG/backup1
note_held before pool64
step list "$LVMSYNC" list --json "$VG/snap1"
step listtext "$LVMSYNC" list "$VG/snap1"
note_held after-list pool64
step send "$LVMSYNC" send "$VG/snap1" -o "$SDIR/d.lvd"
note_held after-send pool64
step inspect "$LVMSYNC" inspect --json "$SDIR/d.lvd"
step apply "$LVMSYNC" apply "$SDIR/d.lvd" /dev/$VG/backup1
record_sum backup /dev/$VG/backup1

# ---------------------------------------------------- the same through sync
scenario_begin sync
record_sum origin /dev/$VG/origin
step sync "$LVMSYNC" "$VG/snap1" /dev/$VG/backup2
note_held after-sync pool64
record_sum backup /dev/$VG/backup2

# ------------------------------------------- a later snapshot as the source
scenario_begin datasrc
copy_dev /dev/$VG/origin /dev/$VG/backup3
snapshot origin snapA
change /dev/$VG/origin $((64 * KiB))
snapshot origin snapB
# Written after snapB: the backup must not get these.
fill_range /dev/$VG/origin $((20 * MiB)) $((1 * MiB)) random
fill_range /dev/$VG/origin $((9 * MiB)) $((64 * KiB)) random
blkdiscard -o $((4 * MiB)) -l $((1 * MiB)) /dev/$VG/origin
fact snapB_id "$(thin_id snapB)"
fact snapA_id "$(thin_id snapA)"
record_sum snapB /dev/$VG/snapB
record_sum origin /dev/$VG/origin
step send "$LVMSYNC" send "$VG/snapA" --data-source /dev/$VG/snapB -o "$SDIR/d.lvd"
note_held after-send pool64
step inspect "$LVMSYNC" inspect --json "$SDIR/d.lvd"
step apply "$LVMSYNC" apply "$SDIR/d.lvd" /dev/$VG/backup3
record_sum backup /dev/$VG/backup3
# The origin named as the data source: compared with it, no point in time.
fact origin_id "$(thin_id origin)"
step sendorigin "$LVMSYNC" send "$VG/snapA" --data-source /dev/$VG/origin -o "$SDIR/o.lvd"
step inspectorigin "$LVMSYNC" inspect --json "$SDIR/o.lvd"

# ------------------------------------------------------------- 1 MiB blocks
scenario_begin chunk1m
make_pool pool1m 1m
make_thin pool1m big
copy_dev /dev/$VG/big /dev/$VG/backup4
snapshot big bigsnap
change /dev/$VG/big $((1 * MiB))
record_sum origin /dev/$VG/big
step list "$LVMSYNC" list --json "$VG/bigsnap"
step pipe bash -c '"$1" send "$2" -o - | "$1" apply - "$3"' _ "$LVMSYNC" "$VG/bigsnap" /dev/$VG/backup4
note_held after-pipe pool1m
record_sum backup /dev/$VG/backup4

# --------------------------------------------------- a snapshot of a snapshot
scenario_begin snapsnap
snapshot big s1
copy_dev /dev/$VG/s1 /dev/$VG/backup5
snapshot s1 s2
change /dev/$VG/s1 $((1 * MiB))
record_sum s1 /dev/$VG/s1
record_sum big /dev/$VG/big
step send "$LVMSYNC" send "$VG/s2" -o "$SDIR/d.lvd"
step apply "$LVMSYNC" apply "$SDIR/d.lvd" /dev/$VG/backup5
note_held after pool1m
record_sum backup /dev/$VG/backup5

# ---------------------------------------------------------------- refusals
scenario_begin errors
fakebin=/tmp/fakebin
mkdir -p $fakebin
# Someone else holds the metadata snapshot: refused, and left held.
dmsetup message "$VG-pool64-tpool" 0 reserve_metadata_snap
note_held others-before pool64
step held "$LVMSYNC" list "$VG/snap1"
note_held others-after pool64
dmsetup message "$VG-pool64-tpool" 0 release_metadata_snap
# thin_delta fails, or prints something else: released.
printf '#!/bin/sh\necho "thin_delta: some detail" >&2\necho "fake failure: metadata is damaged" >&2\nexit 1\n' > $fakebin/thin_delta
chmod 755 $fakebin/thin_delta
step failing env PATH=$fakebin:$PATH "$LVMSYNC" send "$VG/snap1" -o "$SDIR/never.lvd"
note_held after-failing pool64
printf '#!/bin/sh\necho "<superblock data_block_size=\\"128\\"><diff"\n' > $fakebin/thin_delta
step garbage env PATH=$fakebin:$PATH "$LVMSYNC" list "$VG/snap1"
note_held after-garbage pool64
# Not installed: a PATH with dmsetup and lvs but no thin_delta.
nothin=/tmp/nothin
mkdir -p $nothin
ln -sf "$(command -v dmsetup)" $nothin/dmsetup
ln -sf "$(command -v lvs)" $nothin/lvs
step missing env PATH=$nothin "$LVMSYNC" list "$VG/snap1"
note_held after-missing pool64
# A plain thin LV, an inactive thin snapshot.
step plain "$LVMSYNC" list "$VG/origin"
lvcreate -q -y -s -n inactive "$VG/origin"
step inactive "$LVMSYNC" list "$VG/inactive"
# Data sources: a thin LV of another pool, an unrelated thin LV.
step otherpool "$LVMSYNC" send "$VG/snap1" --data-source /dev/$VG/big -o "$SDIR/never.lvd"
lvcreate -q -y -V "$SIZE" --thinpool pool64 -n unrelated "$VG"
step unrelated "$LVMSYNC" send "$VG/snap1" --data-source /dev/$VG/unrelated -o "$SDIR/never.lvd"
note_held after-all pool64
[ ! -e "$SDIR/never.lvd" ] || fact never-written present

# ----------------------------------------------------------------- signals
scenario_begin signals
slowbin=/tmp/slowbin
mkdir -p $slowbin
printf '#!/bin/sh\nsleep 60\nexec /usr/sbin/thin_delta "$@"\n' > $slowbin/thin_delta
chmod 755 $slowbin/thin_delta
for sig in INT TERM; do
    PATH=$slowbin:$PATH "$LVMSYNC" list "$VG/snap1" > "$SDIR/$sig.out" 2> "$SDIR/$sig.err" < /dev/null &
    pid=$!
    # Wait until it holds the metadata snapshot.
    for _ in $(seq 100); do
        [ "$(held pool64)" = - ] || break
        sleep 0.2
    done
    note_held $sig-during pool64
    kill -$sig $pid
    rc=0
    wait $pid || rc=$?
    echo $rc > "$SDIR/$sig.rc"
    note_held $sig-after pool64
    log "$sig: rc=$rc"
done
# Clean up a reservation left behind, so the rest of the step is not affected.
[ "$(held pool64)" = - ] || dmsetup message "$VG-pool64-tpool" 0 release_metadata_snap
