#!/bin/bash
# vm-options: --disks 1 --disk-size 1G
#
# Guest scenario script for `lvmsync-rs backup` on real LVM volumes.
#
#   rounds    five backups of an origin to a backup LV, with writes to the
#             origin before each and, in rounds 3 to 5, a writer that keeps
#             writing during the backup. After each round the backup LV must
#             equal the snapshot the round made, and only that one snapshot
#             may be left.
#   leftover  a tagged snapshot left behind by a run that died (after it
#             created its snapshot, or before it removed the old base): the
#             next run removes it and ends with one snapshot.
#   wrongbase a delta made from another snapshot is refused by apply and
#             the copy is unchanged; with --force it is applied.
#   seedkill  the first backup to a regular file over a slow remote shell is
#             killed midway; the next run resumes (sends less than the
#             whole) and the file equals the snapshot.
#   inckill   the same for an incremental backup.
#   overflow  the base snapshot overflows: backup compares the copy with a
#             new snapshot and repairs it; the same when the snapshot the
#             copy holds was removed; --reseed copies the whole volume.
#   thin      three backups of a thin origin (with discards) to a thin LV.
#   restore   after a backup, the origin is damaged; the backup copy is
#             copied onto a fresh LV (sync --full) and repairs the origin in
#             place (verify --repair): both end equal to the copy, and the
#             next backup is an incremental again.
#
# Each case's directory holds the commands' rc/out/err, sums.txt ("NAME
# SHA256"), and owned.txt (tool-owned snapshots, one per line).
# tests/suite/vm_backup.rs judges them.

[ -f tests/vm/lib.sh ] || cd "$(dirname "$0")/../../.." || exit 1
. tests/vm/lib.sh
set -eu -o pipefail

VG=lvmsynctest
SIZE=48m

# owned SUFFIX [ORIGIN]: record the tool-owned snapshots of ORIGIN (default
# origin) in owned$SUFFIX.txt.
owned() {
    owned_of "${2:-origin}" > "$SDIR/owned$1.txt"
}

# owned_of ORIGIN: the tool-owned snapshots of ORIGIN, oldest first.
owned_of() {
    lvs --noheadings -o lv_name,origin,lv_tags --sort lv_time "$VG" |
        awk -v o="$1" '$2 == o && $3 ~ /lvmsync_rs_/ {print $1}'
}

# newest_owned [ORIGIN]: the newest tool-owned snapshot of ORIGIN.
newest_owned() { owned_of "${1:-origin}" | tail -n 1; }

# A mix of changes, different each time (random data).
change() {
    local dev=$1 seed=$2
    for i in 3 17 101 777 2048 5000 $((seed * 97 % 9000 + 20)); do
        fill_range "$dev" $((i * 4096)) 4096 random
    done
    fill_range "$dev" $(((seed % 5) * 4 * MiB + 12 * MiB)) $((2 * MiB)) random
    fill_range "$dev" $((30 * MiB)) $((256 * KiB)) zero
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

# kill_midway PID: once the copy's state says a transfer is under way, let
# it run 2 s more, then kill PID (the sending backup) outright.
kill_midway() {
    local i
    for i in $(seq 1 300); do
        grep -q '"applying": {' "$IMG.lvmsync-state" 2>/dev/null && break
        sleep 0.2
    done
    sleep 2
    kill -9 "$1" || true
}

# A remote shell for `-e`: runs the command line it is given with sh, its
# stdin fed at about 4 MB/s, so that a transfer can be cut midway.
SLOW=/tmp/slow-rsh
cat > $SLOW <<'EOF'
#!/bin/sh
shift
exec python3 -c '
import os, subprocess, sys, threading, time
p = subprocess.Popen(["sh", "-c", sys.argv[1]], stdin=subprocess.PIPE)
os.close(1)
def pump():
    src = sys.stdin.buffer
    try:
        while True:
            b = src.read1(64 * 1024)
            if not b:
                break
            p.stdin.write(b)
            p.stdin.flush()
            time.sleep(0.016)
    except (BrokenPipeError, ValueError):
        pass
    try:
        p.stdin.close()
    except BrokenPipeError:
        pass
threading.Thread(target=pump, daemon=True).start()
os._exit(p.wait())
' "$1"
EOF
chmod +x $SLOW

make_vg "$VG" /dev/vda
make_origin "$VG" origin "$SIZE" fill
fill_range /dev/$VG/origin $((2 * MiB)) $((6 * MiB)) random
make_origin "$VG" copy "$SIZE"
# The copy starts as garbage: the seed must overwrite all of it.
fill_range /dev/$VG/copy 0 $((48 * MiB)) random

# ------------------------------------------------------------------ rounds
scenario_begin rounds
for r in 1 2 3 4 5; do
    change /dev/$VG/origin "$r"
    pid=
    if [ "$r" -ge 3 ]; then
        writer /dev/$VG/origin &
        pid=$!
    fi
    step "backup$r" "$LVMSYNC" backup --json --snapshot-size 32m "$VG/origin" /dev/$VG/copy
    [ -n "$pid" ] && { kill "$pid"; wait "$pid" || true; }
    owned "$r"
    snap=$(newest_owned)
    echo "$snap" > "$SDIR/snap$r.txt"
    record_sum "snap$r" "/dev/$VG/$snap"
    record_sum "copy$r" /dev/$VG/copy
    record_sum "origin$r" /dev/$VG/origin
done
ls /var/lib/lvmsync-rs > "$SDIR/statefiles.txt" || true
cat /var/lib/lvmsync-rs/*.state > "$SDIR/state.json" || true

# ---------------------------------------------------------------- leftover
scenario_begin leftover
tag=$(lvs --noheadings -o lv_tags "$VG/$(newest_owned)" | tr -d ' ')
echo "$tag" > "$SDIR/tag.txt"
# As if a run had died after creating its snapshot.
lvcreate -q -y -s -L 8m -n left-new --addtag "$tag" "$VG/origin"
change /dev/$VG/origin 6
owned -before
step backup "$LVMSYNC" backup --json --snapshot-size 32m "$VG/origin" /dev/$VG/copy
owned -after
snap=$(newest_owned)
record_sum snap "/dev/$VG/$snap"
record_sum copy /dev/$VG/copy
# An untagged snapshot is never touched.
lvcreate -q -y -s -L 8m -n not-ours "$VG/origin"
step backup2 "$LVMSYNC" backup --json --snapshot-size 32m "$VG/origin" /dev/$VG/copy
lvs --noheadings -o lv_name "$VG" | tr -d ' ' > "$SDIR/lvs.txt"
lvremove -q -y "$VG/not-ours"

# --------------------------------------------------------------- wrongbase
scenario_begin wrongbase
lvcreate -q -y -s -L 8m -n other "$VG/origin"
change /dev/$VG/origin 7
step send "$LVMSYNC" send "$VG/other" -o "$SDIR/other.lvd"
record_sum before /dev/$VG/copy
step apply "$LVMSYNC" apply "$SDIR/other.lvd" /dev/$VG/copy
record_sum after /dev/$VG/copy
step force "$LVMSYNC" apply --force "$SDIR/other.lvd" /dev/$VG/copy
record_sum forced /dev/$VG/copy
record_sum origin /dev/$VG/origin
lvremove -q -y "$VG/other"
# The copy no longer holds a known point in time: the next run compares
# it with a new snapshot and repairs it.
step after "$LVMSYNC" backup --json --snapshot-size 32m "$VG/origin" /dev/$VG/copy
record_sum snap "/dev/$VG/$(newest_owned)"
record_sum copy /dev/$VG/copy

# ---------------------------------------------------------------- seedkill
scenario_begin seedkill
IMG=/tmp/copy.img
DEST="backuphost:$IMG"
# A second origin, so its snapshots are apart from the copy's.
make_origin "$VG" data "$SIZE"
fill_range /dev/$VG/data 0 $((40 * MiB)) random
# The backups of data to the file, over the slow remote shell.
SLOW_BACKUP=("$LVMSYNC" backup --json --create -e $SLOW --remote-path "$LVMSYNC"
    --snapshot-size 100%ORIGIN "$VG/data" "$DEST")
# killed_backup: one of them, killed once its transfer is under way; keeps
# the file's state as the kill left it.
killed_backup() {
    local pid
    "${SLOW_BACKUP[@]}" > "$SDIR/killed.out" 2> "$SDIR/killed.err" < /dev/null &
    pid=$!
    kill_midway "$pid"
    wait "$pid" || true
    sleep 1
    cp "$IMG.lvmsync-state" "$SDIR/state-killed.json" || true
}
killed_backup
owned -killed data
step resume "${SLOW_BACKUP[@]}"
owned -after data
record_sum snap "/dev/$VG/$(newest_owned data)"
record_sum copy "$IMG"
du -k --apparent-size "$IMG" > "$SDIR/du.txt"
du -k "$IMG" >> "$SDIR/du.txt"

# ----------------------------------------------------------------- inckill
scenario_begin inckill
fill_range /dev/$VG/data $((4 * MiB)) $((36 * MiB)) random
killed_backup
step resume "${SLOW_BACKUP[@]}"
owned -after data
record_sum snap "/dev/$VG/$(newest_owned data)"
record_sum copy "$IMG"

# ---------------------------------------------------------------- overflow
scenario_begin overflow
# The copy's base has 32 MiB of COW space: writing 40 MiB overflows it.
fill_range /dev/$VG/origin $((4 * MiB)) $((40 * MiB)) random
lvs --noheadings -o lv_name,lv_attr,lv_tags "$VG" > "$SDIR/lvs-overflowed.txt"
step backup "$LVMSYNC" backup --json --snapshot-size 48m "$VG/origin" /dev/$VG/copy
owned -after
record_sum snap "/dev/$VG/$(newest_owned)"
record_sum copy /dev/$VG/copy
# The snapshot the copy holds is gone (removed by hand): compared and
# repaired again.
lvremove -q -y "$VG/$(newest_owned)"
fill_range /dev/$VG/origin $((10 * MiB)) $((1 * MiB)) random
step gone "$LVMSYNC" backup --json --snapshot-size 48m "$VG/origin" /dev/$VG/copy
record_sum snap-gone "/dev/$VG/$(newest_owned)"
record_sum copy-gone /dev/$VG/copy
step reseed "$LVMSYNC" backup --json --reseed --snapshot-size 48m "$VG/origin" /dev/$VG/copy
owned -reseed
record_sum snap-reseed "/dev/$VG/$(newest_owned)"
record_sum copy-reseed /dev/$VG/copy

# -------------------------------------------------------------------- thin
scenario_begin thin
lvcreate -q -y --type thin-pool -L 160m -c 64k --poolmetadatasize 4m -n pool "$VG"
lvcreate -q -y -V 32m --thinpool pool -n tdata "$VG"
lvcreate -q -y -V 32m --thinpool pool -n tcopy "$VG"
fill_range /dev/$VG/tdata 0 $((24 * MiB)) random
# The copy starts as garbage over all of it.
fill_range /dev/$VG/tcopy 0 $((32 * MiB)) random
for r in 1 2 3; do
    if [ "$r" -gt 1 ]; then
        change /dev/$VG/tdata "$r"
        blkdiscard -o $((r * 2 * MiB)) -l $((1 * MiB)) /dev/$VG/tdata
    fi
    step "backup$r" "$LVMSYNC" backup --json "$VG/tdata" /dev/$VG/tcopy
    owned "$r" tdata
    record_sum "snap$r" "/dev/$VG/$(newest_owned tdata)"
    record_sum "copy$r" /dev/$VG/tcopy
done
lvs --noheadings -o lv_name,data_percent "$VG/tcopy" > "$SDIR/tcopy-usage.txt"

# ----------------------------------------------------------------- restore
# The restore procedure of docs/user-guide.md ("Restoring from a backup copy").
scenario_begin restore
step backup "$LVMSYNC" backup --json --snapshot-size 48m "$VG/origin" /dev/$VG/copy
record_sum snap "/dev/$VG/$(newest_owned)"
record_sum copy /dev/$VG/copy
# Then the origin is damaged: rewritten at places, 1 MiB of it zeroed.
change /dev/$VG/origin 8
fill_range /dev/$VG/origin $((40 * MiB)) $((1 * MiB)) zero
record_sum damaged /dev/$VG/origin
# The copy onto a fresh LV, which starts as garbage.
make_origin "$VG" restored "$SIZE"
fill_range /dev/$VG/restored 0 $((48 * MiB)) random
step full "$LVMSYNC" sync --full --json /dev/$VG/copy /dev/$VG/restored
step cmp-full cmp /dev/$VG/copy /dev/$VG/restored
record_sum restored /dev/$VG/restored
# The origin repaired in place: only the blocks that differ are sent.
step repair "$LVMSYNC" verify --repair --json /dev/$VG/copy /dev/$VG/origin
step cmp-repair cmp /dev/$VG/copy /dev/$VG/origin
record_sum origin /dev/$VG/origin
# The nightly backup goes on from the snapshot it kept.
step after "$LVMSYNC" backup --json --snapshot-size 48m "$VG/origin" /dev/$VG/copy
owned -after
record_sum snap-after "/dev/$VG/$(newest_owned)"
record_sum copy-after /dev/$VG/copy

# ---------------------------------------------------------------- operator
# What status and dry runs say on real volumes, and that they change
# nothing; backup --config with a volume that works and one that does not.
scenario_begin operator
change /dev/$VG/origin 9
owned -before
record_sum copy-before /dev/$VG/copy
step status "$LVMSYNC" status --json --origin "$VG/origin" /dev/$VG/copy
step dryrun "$LVMSYNC" backup -n --json --snapshot-size 48m "$VG/origin" /dev/$VG/copy
owned -dryrun
record_sum copy-dryrun /dev/$VG/copy
cat > "$SDIR/backup.toml" <<TOML
[defaults]
snapshot_size = "48m"

[[volume]]
origin = "$VG/origin"
dest = "/dev/$VG/copy"

[[volume]]
origin = "$VG/no-such-lv"
dest = "/tmp/nowhere.img"
create = true
TOML
step config "$LVMSYNC" backup --json --config "$SDIR/backup.toml"
owned -after
record_sum snap-after "/dev/$VG/$(newest_owned)"
record_sum copy-after /dev/$VG/copy
