#!/usr/bin/env bash
# The gate benchmark (`cargo bench --bench gate`) on a fresh ext4
# filesystem for each size, as a dedicated recording store is.
#
# Why: ext4 creates files slowly for a while after a mass deletion (the
# inode allocator skips and re-checks recently freed inodes: `perf` showed
# `recently_deleted`, `find_inode_bit` and inode-table look-ups at 46% of
# file creation). Earlier runs of this benchmark delete hundreds of
# thousands of files, which no boot has; a fresh filesystem per size keeps
# each measurement to the gate's own work.
#
# Needs root (loop mount); otherwise runs the bench in HAFILL_BENCH_DIR
# (default: the system temp dir) and says so.
#
# Run: bash benches/gate.sh            (5 runs per size)
#      RUNS=3 bash benches/gate.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
IMG_DIR=${HAFILL_BENCH_IMG_DIR:-/var/tmp}

if [ "$(id -u)" != 0 ] || ! command -v mkfs.ext4 >/dev/null; then
    echo "NOTE: not root or no mkfs.ext4: running on the existing filesystem; figures depend on its recent history"
    exec cargo bench --bench gate -- --runs "$RUNS"
fi

cargo bench --bench gate --no-run -q 2>/dev/null || cargo bench --bench gate --no-run
MNT=$(mktemp -d /tmp/hafill-gatefs.XXXXXX)
IMG="$IMG_DIR/hafill-gatefs.img"
cleanup() {
    umount "$MNT" 2>/dev/null || true
    rm -f "$IMG"
    rmdir "$MNT" 2>/dev/null || true
}
trap cleanup EXIT

# Placeholders are fallocated, not written: the image stays sparse, its
# size only bounds what the runs may reserve (each 10-second run keeps
# 5.9 GB, each 60-second run 1.0 GB).
for size in 60-second 10-second; do
    cleanup
    truncate -s 48G "$IMG"
    mkfs.ext4 -q -F "$IMG"
    mkdir -p "$MNT"
    mount -o loop "$IMG" "$MNT"
    echo "== $size segments, fresh ext4 at $MNT"
    HAFILL_BENCH_DIR="$MNT" cargo bench --bench gate -- --runs "$RUNS" --only "$size"
done
