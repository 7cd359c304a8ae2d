#!/bin/bash
# vm-options: --disks 2 --disk-size 1G
#
# Guest scenario script for `lvmsync-rs list`: builds LVM snapshots in many
# states on the guest's scratch disks, records what was written, captures
# the kernel's COW device and the dm/LVM view of it, and runs
# `$LVMSYNC list --json` against each.
#
# Run it with:  tests/vm/run-in-guest.sh tests/vm/scenarios/list.sh OUTDIR
#
# Every scenario gets $RESULTS/<scenario>/ with
#   meta        key=value: scenario vg origin snap chunk_size origin_size
#               cow_size (bytes) expect=ok|refuse kernel lvm_version
#   writes.txt  "origin|snap OFFSET LENGTH" (bytes), in write order
#   cow.img     the COW device, read with O_DIRECT
#   table.txt status.txt          dmsetup table/status of the snapshot
#   table-all.txt status-all.txt  dmsetup table/status of every device
#   lvs.txt     lvs -a -o+lv_attr,chunk_size,snap_percent of the VG
#   list.<tag>.{cmd,out,err,rc}   lvmsync-rs list runs (tag vglv: VG/SNAP)
# and $RESULTS/scenarios.txt lists "<scenario> <setup status>".
#
# Arguments: optional scenario names to run only those.
# Exit status: 0 when every scenario's LVM setup succeeded, 1 otherwise
# (what lvmsync-rs itself does is only recorded, never judged here).

[ -f tests/vm/lib.sh ] || cd "$(dirname "$0")/../../.." || exit 1
. tests/vm/lib.sh

VG0=lvmsynctest
DISK0=/dev/vda
DISK1=/dev/vdb

# --------------------------------------------------------------- scenarios

# Writes common to the chunk-size scenarios.  $1 = chunk size in bytes.
chunk_writes() {
    local c=$1 dev=/dev/$VG/$ORIGIN size
    size=$(blockdev --getsize64 "$dev")
    write_chunk "$dev" $((5 * c)) "$c"                        # a single chunk
    write_chunk "$dev" $((40 * c)) $((6 * c))                 # a run of 6 chunks
    write_chunk "$dev" 0 4096                                 # the first chunk, partly
    write_chunk "$dev" $((size - c)) "$c"                     # the last chunk
    write_chunk "$dev" $((20 * c)) "$c"                       # the same chunk ...
    write_chunk "$dev" $((20 * c)) "$c"                       # ... twice
    write_chunk "$dev" $((25 * c + 1536)) 1024                # 1 KiB inside a chunk
    write_chunk "$dev" $((30 * c + c - 1024)) 2048            # across a chunk boundary
    write_chunk "$dev" $((12 * c + c - 512)) 512              # last sector of a chunk
    write_chunk "$dev" $((60 * c)) "$c"                       # two writes making ...
    write_chunk "$dev" $((61 * c)) "$c"                       # ... adjacent chunks
    write_chunk "$dev" $((50 * c)) 4096                       # below earlier writes
    write_chunk "$dev" $((8 * c)) $((c + 512))                # one chunk and a sector
}

chunk_scenario() {
    local name=$1 chunk=$2 origin_size=$3 cow_size=$4
    VG=$VG0 ORIGIN=${name}_origin SNAP=${name}_snap
    make_origin "$VG" "$ORIGIN" "$origin_size" fill
    make_snapshot "$VG" "$ORIGIN" "$SNAP" "$cow_size" "$chunk"
    chunk_writes "$(lv_chunk_size "$VG" "$SNAP")"
    capture "$VG" "$ORIGIN" "$SNAP" ok
    run_list vglv "$VG/$SNAP"
}

sc_chunk4k()   { chunk_scenario chunk4k 4k 32m 8m; }
sc_chunk64k()  { chunk_scenario chunk64k 64k 32m 8m; }
sc_chunk512k() { chunk_scenario chunk512k 512k 64m 16m; }

sc_multiarea() {
    VG=$VG0 ORIGIN=multiarea_origin SNAP=multiarea_snap
    make_origin "$VG" "$ORIGIN" 32m fill
    make_snapshot "$VG" "$ORIGIN" "$SNAP" 8m 4k
    # 4 KiB chunks: 256 exceptions per metadata area.  700 single chunks in
    # a scattered order (a permutation of the 8192 chunks), then two runs.
    awk 'BEGIN { for (i = 0; i < 700; i++) print (i * 7919 % 8192) * 4096, 4096 }' \
        | write_chunks "/dev/$VG/$ORIGIN"
    printf '%s\n' "$((3000 * 4096)) $((64 * 4096))" "$((100 * 4096)) $((33 * 4096))" \
        | write_chunks "/dev/$VG/$ORIGIN"
    capture "$VG" "$ORIGIN" "$SNAP" ok
    run_list vglv "$VG/$SNAP"
}

sc_snapwrite() {
    VG=$VG0 ORIGIN=snapwrite_origin SNAP=snapwrite_snap
    make_origin "$VG" "$ORIGIN" 32m fill
    make_snapshot "$VG" "$ORIGIN" "$SNAP" 8m 4k
    local o=/dev/$VG/$ORIGIN s=/dev/$VG/$SNAP
    write_chunk "$o" $((10 * 4096)) 4096        # origin only
    write_chunk "$s" $((20 * 4096)) 4096        # snapshot only, whole chunk
    write_chunk "$s" $((30 * 4096 + 1024)) 1024 # snapshot only, part of a chunk
    write_chunk "$s" $((40 * 4096)) $((8 * 4096)) # snapshot, a run
    write_chunk "$o" $((50 * 4096)) 4096        # both, origin first
    write_chunk "$s" $((50 * 4096)) 4096
    write_chunk "$s" $((60 * 4096)) 4096        # both, snapshot first
    write_chunk "$o" $((60 * 4096)) 4096
    write_chunk "$s" $((48 * 4096)) 4096        # snapshot, adjacent to the run
    write_chunk "$o" $((49 * 4096)) 4096        # origin, adjacent to that
    capture "$VG" "$ORIGIN" "$SNAP" ok
    run_list vglv "$VG/$SNAP"
}

sc_empty() {
    VG=$VG0 ORIGIN=empty_origin SNAP=empty_snap
    make_origin "$VG" "$ORIGIN" 16m fill
    make_snapshot "$VG" "$ORIGIN" "$SNAP" 4m 4k
    capture "$VG" "$ORIGIN" "$SNAP" ok
    run_list vglv "$VG/$SNAP"
}

sc_dashes() {
    VG=my-vg ORIGIN=data-lv SNAP=data-lv-snap
    make_vg "$VG" "$DISK1"
    make_origin "$VG" "$ORIGIN" 16m fill
    make_snapshot "$VG" "$ORIGIN" "$SNAP" 4m 4k
    local o=/dev/$VG/$ORIGIN
    write_chunk "$o" 0 4096
    write_chunk "$o" $((1 * MiB)) $((16 * KiB))
    write_chunk "$o" $((7 * MiB + 512)) 512
    write_chunk "$o" $((16 * MiB - 8 * KiB)) $((8 * KiB))
    capture "$VG" "$ORIGIN" "$SNAP" ok
    run_list vglv "$VG/$SNAP"
    run_list devpath "/dev/$VG/$SNAP"
    run_list mapper "/dev/mapper/$(dm_name "$VG" "$SNAP")"
}

sc_twosnaps() {
    VG=$VG0 ORIGIN=twosnaps_origin
    local d1=$RESULTS/twosnaps-s1 d2=$RESULTS/twosnaps-s2
    scenario_begin twosnaps-s1
    rm -rf "$d2"
    mkdir -p "$d2"
    : > "$d2/writes.txt"
    local o=/dev/$VG/$ORIGIN
    make_origin "$VG" "$ORIGIN" 32m fill
    make_snapshot "$VG" "$ORIGIN" twosnaps_s1 8m 4k
    SNAP=twosnaps_s1
    # A: before s2 exists (only s1 sees these)
    WRITE_LOGS="$d1/writes.txt"
    write_chunk "$o" $((10 * 4096)) 4096
    write_chunk "$o" $((100 * 4096)) $((4 * 4096))
    write_chunk "$o" $((200 * 4096)) 4096
    make_snapshot "$VG" "$ORIGIN" twosnaps_s2 8m 4k
    # B: both snapshots see these
    WRITE_LOGS="$d1/writes.txt $d2/writes.txt"
    write_chunk "$o" $((10 * 4096)) 4096          # again, chunk already in s1
    write_chunk "$o" $((102 * 4096)) $((4 * 4096)) # overlaps A's run
    write_chunk "$o" $((300 * 4096)) 4096
    write_chunk "$o" $((8000 * 4096)) 4096
    capture "$VG" "$ORIGIN" twosnaps_s1 ok "$d1"
    capture "$VG" "$ORIGIN" twosnaps_s2 ok "$d2"
    run_list vglv "$VG/twosnaps_s1" "$d1"
    run_list vglv "$VG/twosnaps_s2" "$d2"
}

sc_overflow() {
    VG=$VG0 ORIGIN=overflow_origin SNAP=overflow_snap
    local extent
    extent=$(vgs --noheadings --nosuffix --units b -o vg_extent_size "$VG" | tr -d ' ')
    make_origin "$VG" "$ORIGIN" 16m
    # The smallest snapshot: one extent.
    make_snapshot "$VG" "$ORIGIN" "$SNAP" "${extent}b" 4k
    write_chunk "/dev/$VG/$ORIGIN" $((1 * MiB)) 4096
    # Twice the COW size in changed chunks: the snapshot must overflow.
    write_chunk "/dev/$VG/$ORIGIN" $((2 * MiB)) $((2 * extent))
    capture "$VG" "$ORIGIN" "$SNAP" refuse
    meta_set extent_size "$extent"
    run_list vglv "$VG/$SNAP"
    if ! grep -q Invalid "$SDIR/status.txt"; then
        log "expected an invalid snapshot, status: $(cat "$SDIR/status.txt")"
        return 1
    fi
}

# Merge requested while the origin is open: LVM records the merge and
# defers it to the next activation; the kernel still runs a plain snapshot.
sc_merging() {
    VG=$VG0 ORIGIN=merging_origin SNAP=merging_snap
    make_origin "$VG" "$ORIGIN" 32m fill
    make_snapshot "$VG" "$ORIGIN" "$SNAP" 8m 4k
    write_chunk "/dev/$VG/$ORIGIN" $((1 * MiB)) $((8 * KiB))
    write_chunk "/dev/$VG/$ORIGIN" $((9 * MiB)) 4096
    local rc=0
    exec 8< "/dev/$VG/$ORIGIN"
    lvconvert -y --merge "$VG/$SNAP" > "$SDIR/lvconvert.txt" 2>&1 || rc=$?
    echo "rc=$rc" >> "$SDIR/lvconvert.txt"
    capture "$VG" "$ORIGIN" "$SNAP" refuse
    run_list vglv "$VG/$SNAP"
    exec 8<&-
    [ "$rc" -eq 0 ] || return 1
    grep -Eq "^ *\[?$SNAP\]? +$VG +S" "$SDIR/lvs.txt" || { log "snapshot is not marked merging"; return 1; }
}

# Merge running in the kernel: the origin is reactivated with the deferred
# merge, so it becomes a snapshot-merge target and the snapshot device is
# gone.  Polling is off (--poll n), so LVM never finishes the merge and the
# state stays put.
sc_merging_active() {
    VG=$VG0 ORIGIN=mergeact_origin SNAP=mergeact_snap
    make_origin "$VG" "$ORIGIN" 32m fill
    make_snapshot "$VG" "$ORIGIN" "$SNAP" 8m 4k
    write_chunk "/dev/$VG/$ORIGIN" $((2 * MiB)) $((8 * KiB))
    write_chunk "/dev/$VG/$ORIGIN" $((10 * MiB)) 4096
    local rc=0
    {
        exec 8< "/dev/$VG/$ORIGIN"
        lvconvert -y --merge "$VG/$SNAP" || rc=$?
        exec 8<&-
        lvchange -an "$VG/$ORIGIN" || rc=$?
        lvchange -ay --poll n "$VG/$ORIGIN" || rc=$?
        echo "rc=$rc"
    } > "$SDIR/lvconvert.txt" 2>&1
    write_meta "$VG" "$ORIGIN" "$SNAP" refuse
    save_state "$VG" "$SNAP"
    dmsetup table "$(dm_name "$VG" "$ORIGIN")" > "$SDIR/table-origin.txt" 2>&1 || true
    dmsetup status "$(dm_name "$VG" "$ORIGIN")" > "$SDIR/status-origin.txt" 2>&1 || true
    save_cow "$VG" "$SNAP" || log "no COW device to save"
    run_list vglv "$VG/$SNAP"
    run_list origin "$VG/$ORIGIN"
    [ "$rc" -eq 0 ]
}

sc_notsnap() {
    VG=$VG0 ORIGIN=notsnap_origin SNAP=
    make_origin "$VG" "$ORIGIN" 16m
    make_snapshot "$VG" "$ORIGIN" notsnap_snap 4m 4k
    make_origin "$VG" notsnap_linear 8m
    write_meta "$VG" "$ORIGIN" "" refuse
    save_state "$VG" "$ORIGIN"
    dmsetup table "$(dm_name "$VG" notsnap_linear)" > "$SDIR/table-linear.txt" 2>&1 || true
    run_list vglv "$VG/$ORIGIN"
    run_list linear "$VG/notsnap_linear"
}

# A snapshot made with dmsetup alone: lvm2 knows nothing of it, so list
# must work from the device-mapper table (named by its bare dm name).
sc_dmplain() {
    VG=$VG0 ORIGIN=dmplain_origin SNAP=
    make_origin "$VG" "$ORIGIN" 16m fill
    make_origin "$VG" dmplain_cow 4m     # lvcreate -Zy zeroes its start
    local sectors o c
    sectors=$(blockdev --getsz "/dev/$VG/$ORIGIN")
    o=$(dmsetup info -c --noheadings -o major,minor --separator : "$(dm_name "$VG" "$ORIGIN")")
    c=$(dmsetup info -c --noheadings -o major,minor --separator : "$(dm_name "$VG" dmplain_cow)")
    dmsetup create --noudevrules --noudevsync lvmsync-dmplain-origin --table "0 $sectors snapshot-origin $o"
    dmsetup create --noudevrules --noudevsync lvmsync-dmplain-snap --table "0 $sectors snapshot $o $c P 8"
    dmsetup mknodes
    local dev=/dev/mapper/lvmsync-dmplain-origin
    write_chunk "$dev" 0 4096
    write_chunk "$dev" $((3 * MiB)) $((12 * KiB))
    write_chunk "$dev" $((16 * MiB - 4096)) 4096
    write_meta "$VG" "$ORIGIN" "" ok
    meta_set snap lvmsync-dmplain-snap
    meta_set chunk_size 4096
    meta_set cow_size "$(blockdev --getsize64 "/dev/$VG/dmplain_cow")"
    dmsetup table lvmsync-dmplain-snap > "$SDIR/table.txt" 2>&1 || true
    dmsetup status lvmsync-dmplain-snap > "$SDIR/status.txt" 2>&1 || true
    dd if="/dev/$VG/dmplain_cow" of="$SDIR/cow.img" bs=1M iflag=direct status=none
    run_list dmname lvmsync-dmplain-snap
    run_list mapper /dev/mapper/lvmsync-dmplain-snap
    dmsetup remove --noudevrules --noudevsync lvmsync-dmplain-snap
    dmsetup remove --noudevrules --noudevsync lvmsync-dmplain-origin
}

# A snapshot with the transient store (N): it keeps no table on disk.
sc_transient() {
    VG=$VG0 ORIGIN=transient_origin SNAP=
    make_origin "$VG" "$ORIGIN" 16m
    make_origin "$VG" transient_cow 4m
    local sectors o c
    sectors=$(blockdev --getsz "/dev/$VG/$ORIGIN")
    o=$(dmsetup info -c --noheadings -o major,minor --separator : "$(dm_name "$VG" "$ORIGIN")")
    c=$(dmsetup info -c --noheadings -o major,minor --separator : "$(dm_name "$VG" transient_cow)")
    dmsetup create --noudevrules --noudevsync lvmsync-transient-snap --table "0 $sectors snapshot $o $c N 8"
    dmsetup mknodes
    write_meta "$VG" "$ORIGIN" "" refuse
    dmsetup table lvmsync-transient-snap > "$SDIR/table.txt" 2>&1 || true
    run_list dmname lvmsync-transient-snap
    dmsetup remove --noudevrules --noudevsync lvmsync-transient-snap
}

# ------------------------------------------------------------------ driver

ALL="chunk4k chunk64k chunk512k multiarea snapwrite empty dashes twosnaps overflow merging merging_active notsnap dmplain transient"
want=${*:-$ALL}

log "kernel $(uname -r); LVMSYNC=$LVMSYNC"
[ -x "$LVMSYNC" ] || log "note: $LVMSYNC is not executable; list runs will fail"

status=0
: > "$RESULTS/scenarios.txt"
if ! make_vg "$VG0" "$DISK0"; then
    log "cannot create the test volume group on $DISK0"
    echo "setup 1" >> "$RESULTS/scenarios.txt"
    exit 1
fi

for name in $want; do
    if ! declare -F "sc_$name" > /dev/null; then
        log "unknown scenario: $name"
        status=1
        continue
    fi
    dir=${name//_/-}
    start=$(date +%s)
    (
        set -eu -o pipefail
        [ "$name" = twosnaps ] || scenario_begin "$dir"
        "sc_$name"
    )
    rc=$?
    echo "$dir $rc $(( $(date +%s) - start ))s" >> "$RESULTS/scenarios.txt"
    if [ "$rc" -ne 0 ]; then
        log "scenario $dir: setup FAILED (status $rc)"
        status=1
    else
        log "scenario $dir: done in $(( $(date +%s) - start ))s"
    fi
done

{
    echo "== lvs"
    lvs -a -o+lv_attr,chunk_size,snap_percent 2>&1
    echo "== dmsetup table"
    dmsetup table 2>&1 | LC_ALL=C sort
} > "$RESULTS/final-state.txt"

exit "$status"
