# Helpers for scenario scripts run inside the test guest by
# tests/vm/run-in-guest.sh.  Source this file from a scenario script:
#
#   . tests/vm/lib.sh
#
# Conventions
#   $RESULTS          writable results directory (set by run-in-guest.sh)
#   $LVMSYNC          the lvmsync-rs binary under test
#   scenario_begin N  starts result directory $RESULTS/N and makes it current
#                     ($SDIR); later helpers write into it.
#   VG, ORIGIN, SNAP  the current scenario's volume group, origin LV and
#                     snapshot LV; set them (or use make_origin/make_snapshot).
#
# Every helper that changes state (LVM commands, writes) returns non-zero on
# failure, so a scenario run under `set -e` stops at the first setup error.
# run_list never fails: the tool under test may be missing or may refuse.

KiB=1024
MiB=$((1024 * 1024))

: "${RESULTS:?RESULTS is not set (run this through tests/vm/run-in-guest.sh)}"
: "${LVMSYNC:=$PWD/target/release/lvmsync-rs}"

LVM_VERSION=$(lvm version | sed -n 's/^ *LVM version: *//p' | cut -d' ' -f1)
SCENARIO=
SDIR=
VG=
ORIGIN=
SNAP=
WRITE_SEQ=0
# Files that write_chunk appends "origin|snap OFFSET LENGTH" lines to;
# scenario_begin sets it to "$SDIR/writes.txt".
WRITE_LOGS=

# LVM warns about every inherited descriptor (the merge scenarios hold one).
export LVM_SUPPRESS_FD_WARNINGS=1

log() { printf '[%(%T)T] %s\n' -1 "${SCENARIO:+$SCENARIO: }$*" >&2; }

# step TAG CMD...: runs CMD (at most 300 s), saving TAG.cmd, TAG.out,
# TAG.err and TAG.rc in $SDIR.  Never fails: the tool under test is judged
# by the test on the host.
step() {
    local tag=$1 rc=0
    shift
    echo "$*" > "$SDIR/$tag.cmd"
    timeout 300 "$@" > "$SDIR/$tag.out" 2> "$SDIR/$tag.err" < /dev/null || rc=$?
    echo "$rc" > "$SDIR/$tag.rc"
    log "$tag: rc=$rc"
}

# record_sum NAME FILE: appends "NAME SHA256-of-FILE" to $SDIR/sums.txt.
record_sum() { echo "$1 $(sha256sum < "$2" | cut -d' ' -f1)" >> "$SDIR/sums.txt"; }

# fill_range DEV OFFSET LENGTH random|zero: O_DIRECT write of random bytes
# or zeroes, synced.
fill_range() {
    local src=/dev/urandom
    [ "$4" = zero ] && src=/dev/zero
    dd if=$src of="$1" bs=64k iflag=fullblock,count_bytes count="$3" \
        oflag=direct,seek_bytes seek="$2" conv=fsync,notrunc status=none
}

# copy_dev SRC DST: a whole-device copy with O_DIRECT, synced.
copy_dev() { dd if="$1" of="$2" bs=1M iflag=direct oflag=direct conv=fsync status=none; }

# dm_name VG LV: the device-mapper name of an LV (dashes doubled).
dm_name() { echo "${1//-/--}-${2//-/--}"; }

# scenario_begin NAME: fresh result directory $RESULTS/NAME.
scenario_begin() {
    SCENARIO=$1
    SDIR=$RESULTS/$1
    rm -rf "$SDIR"
    mkdir -p "$SDIR"
    : > "$SDIR/writes.txt"
    : > "$SDIR/meta"
    WRITE_LOGS=$SDIR/writes.txt
    WRITE_SEQ=0
    log "begin"
}

# meta_set KEY VALUE [DIR]: set a key=value line in DIR/meta (default $SDIR).
meta_set() {
    local f=${3:-$SDIR}/meta line out=
    if [ -f "$f" ]; then
        while IFS= read -r line; do
            [ "${line%%=*}" = "$1" ] || out+=$line$'\n'
        done < "$f"
    fi
    printf '%s%s=%s\n' "$out" "$1" "$2" > "$f"
}

# make_vg VG DEV [vgcreate options...]
make_vg() {
    local vg=$1 dev=$2
    shift 2
    pvcreate -q -y -ff "$dev"
    vgcreate -q "$@" "$vg" "$dev"
}

# Baseline pattern for origins: every 4 KiB block starts with a line naming
# its offset, padded with spaces.  Copied-out chunks in the COW can then be
# matched to the origin offset they came from, and the pattern compresses
# well.  Generated once per boot into tmpfs.
BASELINE_FILE=/tmp/lvmsync-baseline
baseline_file() {
    local size=$1
    local have=0
    [ -f "$BASELINE_FILE" ] && have=$(stat -c %s "$BASELINE_FILE")
    [ "$size" -ge $((64 * MiB)) ] || size=$((64 * MiB))
    if [ "$have" -lt "$size" ]; then
        python3 -c '
import sys
n = int(sys.argv[1]) // 4096
with open(sys.argv[2], "wb") as f:
    for i in range(0, n, 256):
        f.write(b"".join(b"%-4095s\n" % (b"lvmsync-test baseline off=%d" % (j * 4096))
                         for j in range(i, min(i + 256, n))))
' "$size" "$BASELINE_FILE"
    fi
    echo "$BASELINE_FILE"
}

# make_origin VG LV SIZE [fill]: create a linear LV; with "fill", write the
# baseline pattern over all of it (before any snapshot exists).
make_origin() {
    local vg=$1 lv=$2 size=$3 fill=${4:-}
    lvcreate -q -y -Wn -Zy -L "$size" -n "$lv" "$vg"
    if [ "$fill" = fill ]; then
        local bytes
        bytes=$(blockdev --getsize64 "/dev/$vg/$lv")
        dd if="$(baseline_file "$bytes")" of="/dev/$vg/$lv" bs=1M count="$((bytes / MiB))" \
            iflag=fullblock oflag=direct conv=fsync,notrunc status=none
    fi
}

# make_snapshot VG ORIGIN SNAP SIZE [CHUNK]: lvcreate -s.
make_snapshot() {
    local vg=$1 origin=$2 snap=$3 size=$4 chunk=${5:-}
    lvcreate -q -y -s -L "$size" ${chunk:+-c "$chunk"} -n "$snap" "$vg/$origin"
}

# is_snap_dev DEV: DEV names the current snapshot ($VG/$SNAP).
is_snap_dev() {
    [ -n "$SNAP" ] || return 1
    case $1 in
        "/dev/$VG/$SNAP"|"/dev/mapper/${VG//-/--}-${SNAP//-/--}") return 0 ;;
    esac
    return 1
}

# write_chunk DEV OFFSET LENGTH: write LENGTH bytes at byte OFFSET of DEV
# with O_DIRECT and fsync, so the write (and the exception the snapshot
# target records for it) is on disk when this returns.  OFFSET and LENGTH
# must be multiples of 512.  The data is a line naming the write, repeated.
# Appends "origin|snap OFFSET LENGTH" to every file in $WRITE_LOGS; the kind
# is "snap" when DEV is the current snapshot ($VG/$SNAP) and "origin"
# otherwise (override with WRITE_KIND=...).
write_chunk() {
    local dev=$1 off=$2 len=$3 kind=${WRITE_KIND:-}
    if [ $((off % 512)) -ne 0 ] || [ $((len % 512)) -ne 0 ] || [ "$len" -le 0 ]; then
        log "write_chunk: offset $off / length $len not a positive multiple of 512"
        return 1
    fi
    if [ -z "$kind" ]; then
        kind=origin
        is_snap_dev "$dev" && kind=snap
    fi
    WRITE_SEQ=$((WRITE_SEQ + 1))
    # (yes dies of SIGPIPE once dd has enough: only dd's status counts.)
    (
        set +o pipefail
        yes "lvmsync-test $SCENARIO write=$WRITE_SEQ $kind off=$off len=$len" \
            | dd of="$dev" bs=1M iflag=fullblock,count_bytes count="$len" \
                oflag=direct,seek_bytes seek="$off" conv=fsync,notrunc status=none
    ) || return 1
    local f
    for f in $WRITE_LOGS; do
        echo "$kind $off $len" >> "$f"
    done
}

# write_chunks DEV < "OFFSET LENGTH" lines: many writes with one process
# (same pattern, O_DIRECT and logging as write_chunk, in input order).
write_chunks() {
    local dev=$1 kind=${WRITE_KIND:-}
    if [ -z "$kind" ]; then
        kind=origin
        is_snap_dev "$dev" && kind=snap
    fi
    local out
    out=$(python3 -c "$WRITE_CHUNKS_PY" "$dev" "$kind" "$SCENARIO" "$WRITE_SEQ") || return 1
    WRITE_SEQ=$(echo "$out" | head -n 1)
    local f
    for f in $WRITE_LOGS; do
        echo "$out" | tail -n +2 | grep . >> "$f" || true
    done
}

# The writer behind write_chunks.
WRITE_CHUNKS_PY='import mmap, os, sys
dev, kind, scenario, seq = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
done = []
for line in sys.stdin.read().split("\n"):
    if not line.strip():
        continue
    off, length = (int(x) for x in line.split())
    if off % 512 or length % 512 or length <= 0:
        sys.exit("write_chunks: offset %d / length %d not a positive multiple of 512" % (off, length))
    seq += 1
    text = ("lvmsync-test %s write=%d %s off=%d len=%d\n" % (scenario, seq, kind, off, length)).encode()
    buf = mmap.mmap(-1, length)  # page aligned, as O_DIRECT wants
    buf.write((text * (length // len(text) + 1))[:length])
    if os.pwrite(fd, buf, off) != length:
        sys.exit("short write at %d" % off)
    buf.close()
    done.append("%s %d %d" % (kind, off, length))
os.fsync(fd)
os.close(fd)
print(seq)
for d in done:
    print(d)
'

# run_list TAG TARGET [DIR]: run "$LVMSYNC list --json TARGET", saving
# list.TAG.out, list.TAG.err, list.TAG.rc and list.TAG.cmd in DIR
# (default $SDIR).  Never fails.
run_list() {
    local tag=$1 target=$2 dir=${3:-$SDIR} rc
    echo "$LVMSYNC list --json $target" > "$dir/list.$tag.cmd"
    rc=0
    timeout 300 "$LVMSYNC" list --json "$target" > "$dir/list.$tag.out" 2> "$dir/list.$tag.err" </dev/null || rc=$?
    echo "$rc" > "$dir/list.$tag.rc"
    log "list $tag ($target): rc=$rc"
    return 0
}

# save_cow VG SNAP [DIR]: copy the snapshot's COW device to DIR/cow.img,
# bypassing the page cache (it is not coherent with the snapshot target).
save_cow() {
    local vg=$1 snap=$2 dir=${3:-$SDIR}
    local cow=/dev/mapper/$(dm_name "$vg" "$snap")-cow
    dd if="$cow" of="$dir/cow.img" bs=1M iflag=direct status=none
}

# save_state VG SNAP [DIR]: dmsetup table/status of the snapshot device
# (table.txt, status.txt), of all devices (table-all.txt, status-all.txt),
# and lvs (lvs.txt: the header and the lines of LVs named SNAP or $ORIGIN,
# or whose origin is $ORIGIN).  Never fails.
save_state() {
    local vg=$1 snap=$2 dir=${3:-$SDIR}
    local dm
    dm=$(dm_name "$vg" "$snap")
    dmsetup table "$dm" > "$dir/table.txt" 2>&1 || true
    dmsetup status "$dm" > "$dir/status.txt" 2>&1 || true
    dmsetup table | LC_ALL=C sort > "$dir/table-all.txt" 2>&1 || true
    dmsetup status | LC_ALL=C sort > "$dir/status-all.txt" 2>&1 || true
    lvs -a -o+lv_attr,chunk_size,snap_percent "$vg" 2>&1 \
        | awk -v a="$snap" -v b="${ORIGIN:-}" 'NR == 1 { print; next }
            { for (i = 1; i <= NF; i++) { f = $i; gsub(/^\[|\]$/, "", f)
                if (f != "" && (f == a || f == b)) { print; next } } }' \
        > "$dir/lvs.txt" || true
}

# lv_chunk_size VG LV: snapshot chunk size in bytes (also for hidden LVs,
# such as a snapshot being merged).
lv_chunk_size() {
    lvs -a --noheadings --nosuffix --units b -o lv_name,chunk_size "$1" \
        | awk -v lv="$2" '{ n = $1; gsub(/^\[|\]$/, "", n); if (n == lv) print $2 }'
}

# write_meta VG ORIGIN SNAP EXPECT [DIR]: meta file with sizes in bytes.
write_meta() {
    local vg=$1 origin=$2 snap=$3 expect=$4 dir=${5:-$SDIR}
    local chunk="" cow_size="" origin_size
    origin_size=$(blockdev --getsize64 "/dev/$vg/$origin")
    if [ -n "$snap" ]; then
        chunk=$(lv_chunk_size "$vg" "$snap")
        cow_size=$(blockdev --getsize64 "/dev/mapper/$(dm_name "$vg" "$snap")-cow" 2>/dev/null || true)
    fi
    cat > "$dir/meta" <<EOF
scenario=${dir##*/}
vg=$vg
origin=$origin
snap=$snap
chunk_size=$chunk
origin_size=$origin_size
cow_size=$cow_size
expect=$expect
kernel=$(uname -r)
lvm_version=$LVM_VERSION
EOF
}

# capture VG ORIGIN SNAP EXPECT [DIR]: write_meta + save_state + save_cow.
capture() {
    local vg=$1 origin=$2 snap=$3 expect=$4 dir=${5:-$SDIR}
    write_meta "$vg" "$origin" "$snap" "$expect" "$dir"
    save_state "$vg" "$snap" "$dir"
    save_cow "$vg" "$snap" "$dir"
}
