#!/usr/bin/env bash
# The main job, without LVM and without root: a backup copy brought up to
# date from a snapshot's COW table that a real kernel wrote.
#
#   bash examples/demo.sh [DIR]    (DIR: keep the images there; by default
#                                   a temporary directory, removed at the end)
#
# The fixture dm-fixtures/dashes is a 16 MiB origin, filled with the test
# pattern of tests/vm/lib.sh (each 4 KiB block starts with
# "lvmsync-test baseline off=N"), then snapshotted and written at four
# places; its COW image is the snapshot's store as the kernel left it. Here
# the origin is made again as files: before.img (the origin when the
# snapshot was taken; the chunks the kernel copied into the COW hold exactly
# these bytes) and after.img (before.img with the four writes replayed, as
# writes.txt and tests/vm/lib.sh's write_chunk describe them; it differs
# from before.img in exactly the chunks the COW table lists). Then send,
# apply and verify, as on real volumes. tests/suite/demo.rs runs this and
# checks those claims on the files it leaves.
set -euo pipefail
if [ $# -gt 0 ]; then
    mkdir -p "$1"
    work=$(cd "$1" && pwd)
else
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
fi
cd "$(dirname "$0")/.."
fixture=$PWD/dm-fixtures/dashes

cargo build --release --quiet
bin=${CARGO_TARGET_DIR:-$PWD/target}/release/lvmsync-rs

meta() {
    local v
    v=$(sed -n "s/^$1=//p" "$fixture/meta")
    [ -n "$v" ] || { echo "demo: no $1 in $fixture/meta" >&2; return 1; }
    echo "$v"
}
scenario=$(meta scenario)
size=$(meta origin_size)
chunk=$(meta chunk_size)
kernel=$(meta kernel)
lvm=$(meta lvm_version)

gzip -dc "$fixture/cow.img.gz" > "$work/cow.img"
cd "$work"

# before.img: the test pattern, one 4095-byte line and a newline per 4 KiB.
for ((off = 0; off < size; off += 4096)); do
    printf '%-4095s\n' "lvmsync-test baseline off=$off"
done > before.img

# after.img: the scenario's writes, each a line naming it, repeated.
cp before.img after.img
seq=0
while read -r kind off len; do
    [ "$kind" = origin ] || { echo "demo: ${fixture##*/} writes to its snapshot; only origin writes are replayed" >&2; exit 1; }
    seq=$((seq + 1))
    # (yes dies of SIGPIPE once head has enough.)
    (set +o pipefail; yes "lvmsync-test $scenario write=$seq $kind off=$off len=$len" | head -c "$len") |
        dd of=after.img bs=64k seek="$off" oflag=seek_bytes conv=notrunc status=none
done < "$fixture/writes.txt"

# The first and second columns of a table of extents (list's, verify's).
extents() { awk '$1 ~ /^[0-9]+$/ && $2 ~ /^[0-9]+$/ { print $1, $2 }'; }

"$bin" list --cow cow.img --origin-size "$size" > list.txt
rc=0
"$bin" verify --block-size "$chunk" before.img after.img > differ.txt || rc=$?
if [ "$rc" != 3 ] || [ "$(extents < list.txt)" != "$(extents < differ.txt)" ]; then
    echo "demo: after.img does not differ from before.img in the extents the COW table lists (verify exit $rc)" >&2
    cat list.txt differ.txt >&2
    exit 1
fi

echo "# dm-fixtures/$scenario: a snapshot's COW table written by Linux $kernel with lvm2 $lvm; its origin made again as files"
echo "before.img  the origin when the snapshot was taken: $size bytes"
echo "after.img   the origin after the scenario's $seq writes: it differs from before.img in exactly what the COW table lists,"
echo "            $(sed -n 's/^changed: *//p' list.txt)"

"$bin" send -q --cow cow.img --origin-size "$size" --data-source after.img -o delta.lvd
echo "send        lvmsync-rs send --cow cow.img --origin-size $size --data-source after.img -o delta.lvd"

cp before.img copy.img
"$bin" apply -q delta.lvd copy.img
echo "apply       lvmsync-rs apply delta.lvd copy.img    (copy.img: the backup, a copy of before.img)"

rc=0
"$bin" verify after.img copy.img > verify.txt || rc=$?
if [ "$rc" != 0 ] || ! grep -q '^identical:' verify.txt; then
    echo "demo: lvmsync-rs verify after.img copy.img exited $rc:" >&2
    cat verify.txt >&2
    exit 1
fi
echo "verify      lvmsync-rs verify after.img copy.img: $(grep '^identical:' verify.txt)"

delta=$(stat -c %s delta.lvd)
share=$(awk -v d="$delta" -v s="$size" 'BEGIN { printf "%.3f", 100 * d / s }')
echo "size        delta.lvd is $delta bytes (the changed chunks, lz4-compressed), the device $size bytes: $share%"
