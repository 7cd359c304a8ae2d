#!/bin/bash
# Regenerate the dm-snapshot fixtures in dm-fixtures/ from a real kernel.
#
# Usage: dm-fixtures/capture.sh [--results DIR] [--no-run] [SCENARIO...]
#
# Boots the test guest (tests/vm/run-in-guest.sh) with
# tests/vm/scenarios/list.sh, which creates LVM snapshots in known states,
# and turns each scenario's results into dm-fixtures/<scenario>/:
#
#   cow.img.gz     the snapshot's COW device as the kernel wrote it
#                  (gzip -9 -n; mostly zeros and a repetitive pattern)
#   expected.json  {"chunk_size", "origin_size", "cow_size", "expect",
#                   "extents": [{"offset", "length"}...], "status"}
#                  sizes in bytes; extents are the chunks touched by any
#                  write in writes.txt (origin or snapshot), chunk aligned,
#                  sorted, adjacent chunks coalesced, clipped to the origin;
#                  status is `dmsetup status` of the snapshot
#   meta           key=value facts about the scenario (see list.sh)
#   writes.txt     "origin|snap OFFSET LENGTH" in the order written
#   table.txt status.txt lvs.txt   dmsetup table/status and lvs output
#
# Scenarios without a COW device (notsnap) are skipped.  Before writing a
# fixture, the COW image is decoded and, for scenarios expected to work,
# its exception table must cover exactly the expected chunks, and every
# chunk copied from the origin must hold the origin's old data.
#
# --results DIR  keep the raw guest results in DIR
#                (default target/vm-results/capture)
# --no-run       do not boot the guest; reuse what DIR already holds
# SCENARIO...    only these (names as in list.sh, e.g. chunk4k merging_active)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
results=$repo/target/vm-results/capture
run=1
scenarios=()
while [ $# -gt 0 ]; do
    case $1 in
        --results) results=$2; shift 2 ;;
        --results=*) results=${1#*=}; shift ;;
        --no-run) run=0; shift ;;
        -h|--help) sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "capture.sh: unknown option $1" >&2; exit 2 ;;
        *) scenarios+=("$1"); shift ;;
    esac
done

PYTHON=/usr/bin/python3
[ -x "$PYTHON" ] || { echo "capture.sh: $PYTHON is missing; apt-get install python3" >&2; exit 2; }

status=0
if [ "$run" = 1 ]; then
    rm -rf "$results"
    mkdir -p "$results"
    start=$(date +%s)
    "$repo/tests/vm/run-in-guest.sh" "$repo/tests/vm/scenarios/list.sh" "$results" "${scenarios[@]}" || status=$?
    echo "capture.sh: guest run took $(( $(date +%s) - start ))s (status $status)" >&2
    if [ ! -s "$results/rc" ]; then
        echo "capture.sh: the guest run did not complete; nothing captured" >&2
        exit 1
    fi
fi
[ -f "$results/scenarios.txt" ] || { echo "capture.sh: no $results/scenarios.txt" >&2; exit 1; }

"$PYTHON" - "$results" "$repo/dm-fixtures" <<'PY' || status=1
import json, os, shutil, struct, subprocess, sys

results, fixtures = sys.argv[1], sys.argv[2]
MAGIC = 0x70416E53
failed = []

def read_meta(path):
    meta = {}
    with open(path) as f:
        for line in f:
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                meta[k] = v
    return meta

def read_writes(path):
    writes = []
    with open(path) as f:
        for line in f:
            if line.strip():
                kind, off, length = line.split()
                writes.append((kind, int(off), int(length)))
    return writes

def extents_of(writes, chunk, origin_size):
    chunks = set()
    for _, off, length in writes:
        chunks.update(range(off // chunk, (off + length - 1) // chunk + 1))
    out = []
    for c in sorted(chunks):
        if out and out[-1][1] == c:
            out[-1][1] = c + 1
        else:
            out.append([c, c + 1])
    ext = []
    for a, b in out:
        start, end = a * chunk, min(b * chunk, origin_size)
        if end > start:
            ext.append({"offset": start, "length": end - start})
    return ext

def decode_cow(img):
    """Header and exception table (old_chunk, new_chunk) in table order."""
    magic, valid, version, chunk_sectors = struct.unpack_from("<IIII", img, 0)
    hdr = {"magic": magic, "valid": valid, "version": version,
           "chunk_sectors": chunk_sectors}
    if magic != MAGIC or chunk_sectors == 0:
        return hdr, [], 0
    chunk = chunk_sectors * 512
    epa = chunk // 16
    table, area = [], 0
    while True:
        base = (1 + (epa + 1) * area) * chunk
        if base + chunk > len(img):
            break
        done = False
        for i in range(epa):
            old, new = struct.unpack_from("<QQ", img, base + 16 * i)
            if new == 0:
                done = True
                break
            table.append((old, new))
        area += 1
        if done:
            break
    return hdr, table, area

for name in sorted(os.listdir(results)):
    d = os.path.join(results, name)
    if not os.path.isfile(os.path.join(d, "meta")):
        continue
    if not os.path.isfile(os.path.join(d, "cow.img")):
        print("%-15s skipped (no COW device)" % name)
        continue
    meta = read_meta(os.path.join(d, "meta"))
    writes = read_writes(os.path.join(d, "writes.txt"))
    with open(os.path.join(d, "cow.img"), "rb") as f:
        img = f.read()
    chunk = int(meta["chunk_size"])
    origin_size = int(meta["origin_size"])
    expect = meta["expect"]
    status_txt = open(os.path.join(d, "status.txt")).read().strip()
    ext = extents_of(writes, chunk, origin_size)
    hdr, table, areas = decode_cow(img)

    problems = []
    if hdr["magic"] != MAGIC:
        problems.append("bad magic %#x" % hdr["magic"])
    elif hdr["chunk_sectors"] * 512 != chunk:
        problems.append("header chunk size %d sectors, lvs says %d bytes" % (hdr["chunk_sectors"], chunk))
    olds = [o for o, _ in table]
    news = [n for _, n in table]
    if expect == "ok":
        want = set()
        for e in ext:
            want.update(range(e["offset"] // chunk, (e["offset"] + e["length"] + chunk - 1) // chunk))
        if hdr["valid"] != 1:
            problems.append("snapshot marked invalid")
        if len(set(olds)) != len(olds):
            problems.append("duplicate old_chunk in the table")
        if set(olds) != want:
            problems.append("table chunks differ from writes: missing %s, extra %s" % (
                sorted(want - set(olds))[:10], sorted(set(olds) - want)[:10]))
        # Chunks only the origin wrote to hold the origin's old data: the
        # baseline pattern naming their own offset (if the origin was filled).
        snap_chunks = set()
        for kind, off, length in writes:
            if kind == "snap":
                snap_chunks.update(range(off // chunk, (off + length - 1) // chunk + 1))
        for old, new in table:
            if old in snap_chunks:
                continue
            data = img[new * chunk:new * chunk + 64]
            label = b"lvmsync-test baseline off=%d " % (old * chunk)
            if data.startswith(b"lvmsync-test baseline") and not data.startswith(label):
                problems.append("chunk %d holds %r" % (old, data[:40]))
                break
    elif expect == "refuse" and hdr["valid"] == 0 and "Invalid" not in status_txt:
        problems.append("header invalid but status %r" % status_txt)

    order = "ascending" if news == sorted(news) else "not ascending"
    print("%-15s chunk=%-6d valid=%d exceptions=%-4d areas=%d new_chunk %s, first %s; %s%s" % (
        name, chunk, hdr["valid"], len(table), areas, order, news[:4], status_txt,
        "" if not problems else "\n    PROBLEM: " + "; ".join(problems)))
    if problems:
        failed.append(name)
        continue

    out = os.path.join(fixtures, name)
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    with open(os.path.join(out, "cow.img.gz"), "wb") as f:
        subprocess.run(["gzip", "-9", "-n", "-c"], input=img, stdout=f, check=True)
    expected = {
        "chunk_size": chunk,
        "origin_size": origin_size,
        "cow_size": len(img),
        "expect": expect,
        "extents": ext,
        "status": status_txt,
    }
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    for extra in ("meta", "writes.txt", "table.txt", "status.txt", "lvs.txt"):
        src = os.path.join(d, extra)
        if os.path.isfile(src):
            shutil.copyfile(src, os.path.join(out, extra))

if failed:
    print("capture.sh: not written, the COW did not match: %s" % " ".join(failed))
    sys.exit(1)
PY

if [ -f "$results/scenarios.txt" ] && awk '$2 != 0 { bad = 1 } END { exit !bad }' "$results/scenarios.txt"; then
    echo "capture.sh: scenario setup failed for: $(awk '$2 != 0 { printf "%s ", $1 }' "$results/scenarios.txt")(see $results/guest.log)" >&2
    status=1
fi
du -sh "$repo/dm-fixtures" >&2
exit "$status"
