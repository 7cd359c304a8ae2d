#!/usr/bin/env bash
# Lists the changes recorded in a COW image that a real kernel wrote (one of
# the dm-fixtures), the way `lvmsync-rs list` reads a live snapshot.
#
#   bash examples/list-fixture.sh [FIXTURE]     (default: multiarea)
set -euo pipefail
cd "$(dirname "$0")/.."
fixture=${1:-multiarea}
dir=dm-fixtures/$fixture
[ -f "$dir/cow.img.gz" ] || { echo "no fixture $dir (see dm-fixtures/)" >&2; exit 1; }

cargo build --release --quiet
img=target/examples-$fixture.cow
gzip -dc "$dir/cow.img.gz" > "$img"
origin_size=$(sed -n 's/^origin_size=//p' "$dir/meta")

echo "# The scenario wrote these byte ranges (origin|snap OFFSET LENGTH), first 10:"
head -n 10 "$dir/writes.txt"
echo
echo "# lvmsync-rs list --cow $img --origin-size $origin_size"
target/release/lvmsync-rs list --cow "$img" --origin-size "$origin_size"
