#!/usr/bin/env bash
# What installing into Frigate costs: the same backfill of SEGMENTS 10-second
# 720p MP4 segments (Frigate's layout, ffmpeg-encoded, about 2.5 MB each)
# from rs01 into rs02,
#   1. as a `segments` recorder (pattern "%Y-%m-%d/%H/{camera}/%M.%S.mp4"):
#      file renamed into place;
#   2. as Frigate (`kind = "frigate"`): file renamed into place, then its
#      row, under Frigate's write lock, each install with its intent;
# ROUNDS times each, taking turns, page caches dropped before each run
# (root). Reports each run's seconds and rate, and the installs per second.
#
# Run: bash benches/frigate.sh
# Knobs: SEGMENTS (120), ROUNDS (3), HAFILL_BENCH_DIR (/var/tmp), KEEP.
set -euo pipefail
cd "$(dirname "$0")/.."
SEGMENTS=${SEGMENTS:-120}
ROUNDS=${ROUNDS:-3}
for t in ffmpeg sqlite3 python3; do
    command -v $t >/dev/null || { echo "SKIPPED: $t is not installed (apt-get install ffmpeg sqlite3 python3)"; exit 0; }
done

cargo build --release -q
B=$PWD/target/release/hafill
W=$(mktemp -d "${HAFILL_BENCH_DIR:-/var/tmp}/hafill-frigate.XXXXXX")
SERVE=
cleanup() {
    [ -n "$SERVE" ] && kill "$SERVE" 2>/dev/null || true
    [ -n "${KEEP:-}" ] && { echo "kept: $W"; return; }
    rm -rf "$W"
}
trap cleanup EXIT
export HAFILL_LOG=${HAFILL_LOG:-error}

echo "== $SEGMENTS segments of 10 s, 1280x720 H.264 at 2 Mbit/s, remuxed with +faststart"
ffmpeg -hide_banner -loglevel error -f lavfi -i "testsrc2=size=1280x720:rate=25" \
    -t $((10 * SEGMENTS)) -c:v libx264 -preset ultrafast -g 25 -b:v 2M -pix_fmt yuv420p \
    -f segment -segment_time 10 -segment_format mp4 -segment_format_options movflags=+faststart \
    -reset_timestamps 1 "$W/seg%04d.mp4"
du -sb "$W"/seg*.mp4 | awk '{s+=$1} END {printf "source: %.1f MB\n", s/1e6}'

DDL='CREATE TABLE "recordings" ("id" VARCHAR(30) NOT NULL PRIMARY KEY, "camera" VARCHAR(20) NOT NULL, "path" VARCHAR(255) NOT NULL, "start_time" DATETIME NOT NULL, "end_time" DATETIME NOT NULL, "duration" REAL NOT NULL, "motion" INTEGER, "objects" INTEGER, "segment_size" REAL NOT NULL, "dBFS" INTEGER, "regions" INTEGER);
CREATE INDEX "recordings_camera" ON "recordings" ("camera");
CREATE UNIQUE INDEX "recordings_path" ON "recordings" ("path");
CREATE INDEX "recordings_camera_start_time_end_time" ON "recordings" ("camera", "start_time" DESC, "end_time" DESC);
CREATE INDEX "recordings_start_time" ON "recordings" ("start_time");
PRAGMA journal_mode=WAL;'

# Lays out segments FIRST..LAST of the source as camera cam-a in FOLDER's
# media/recordings, with their rows in FOLDER/config/frigate.db.
T0=$(( ($(date +%s) / 3600 - 3) * 3600 ))
frigate_site() { # folder first last
    local dir=$1 first=$2 last=$3
    mkdir -p "$dir/media/recordings" "$dir/config"
    sqlite3 "$dir/config/frigate.db" "$DDL" >/dev/null
    python3 - "$W" "$dir" "$first" "$last" "$T0" <<'EOF'
import os, shutil, sqlite3, sys, time
w, d, first, last, t0 = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
db = sqlite3.connect(os.path.join(d, "config/frigate.db"))
for k in range(first, last + 1):
    start = t0 + 10 * k
    rel = time.strftime("%Y-%m-%d/%H/cam-a/%M.%S.mp4", time.gmtime(start))
    dst = os.path.join(d, "media/recordings", rel)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copy(os.path.join(w, "seg%04d.mp4" % k), dst)
    size = round(os.path.getsize(dst) / 2**20, 2)
    db.execute("INSERT INTO recordings VALUES (?,?,?,?,?,?,?,?,?,?,?)",
               ("%d.0-bench%d" % (start, k % 10), "cam-a", "/media/frigate/recordings/" + rel,
                float(start), start + 10.0, 10.0, k, 0, size, -40, 1))
db.commit()
EOF
}

$B keygen --out "$W/rs01" --name rs01 >"$W/id1" 2>/dev/null
$B keygen --out "$W/rs02" --name rs02 >"$W/id2" 2>/dev/null
recorder() { # kind dir
    if [ "$1" = frigate ]; then
        printf '[recorder]\nkind = "frigate"\npath = "%s/media/recordings"\ndb = "%s/config/frigate.db"\nretain_days = 30\nsettle = "0s"\n' "$2" "$2"
    else
        printf '[recorder]\nkind = "segments"\npath = "%s/media/recordings"\npattern = "%%Y-%%m-%%d/%%H/{camera}/%%M.%%S.mp4"\nsettle = "0s"\n' "$2"
    fi
}
config() { # name listen peer peer_addr peer_id kind dir
    printf '[server]\nname = "%s"\nlisten = "%s"\nstate = "%s/state"\nkey = "key.pem"\ncert = "cert.pem"\nreserve = "1GiB"\nstatus = "off"\n\n[[peer]]\nname = "%s"\naddr = "%s"\nid = "%s"\n\n[[camera]]\nid = "cam-*"\nservers = ["rs01", "rs02"]\n\n' "$1" "$2" "$7" "$3" "$4" "$5"
    recorder "$6" "$7"
}
frigate_site "$W/rs01/site" 0 $((SEGMENTS - 1))
config rs01 127.0.0.1:7851 rs02 127.0.0.1:7852 "$(cat "$W/id2")" frigate "$W/rs01/site" >"$W/rs01/hafill.toml"
$B store init --config "$W/rs01/hafill.toml" >/dev/null
$B serve --config "$W/rs01/hafill.toml" --no-scrub --cpu normal 2>"$W/serve.log" &
SERVE=$!
sleep 1

drop_caches() { sync; [ "$(id -u)" = 0 ] && echo 3 >/proc/sys/vm/drop_caches || true; }
printf '\n| round | adapter | segments | seconds | MiB/s | installs/s |\n|---|---|---|---|---|---|\n'
for r in $(seq 1 "$ROUNDS"); do
    for kind in segments frigate; do
        d="$W/rs02/$kind"
        rm -rf "$d"
        # rs02 recorded the first segment (so Frigate knows the camera).
        frigate_site "$d" 0 0
        config rs02 127.0.0.1:7852 rs01 127.0.0.1:7851 "$(cat "$W/id1")" "$kind" "$d" >"$W/rs02/hafill.toml"
        $B store init --config "$W/rs02/hafill.toml" >/dev/null
        drop_caches
        out=$($B backfill --config "$W/rs02/hafill.toml" --json)
        python3 - "$r" "$kind" "$out" <<'EOF'
import json, sys
r, kind, o = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
assert not o["failed"], o["failed"]
print("| %s | %s | %d | %.2f | %.1f | %.1f |" % (r, kind, o["segments"], o["seconds"], o["rate_mib_s"], o["segments"] / o["seconds"]))
EOF
        if [ "$kind" = frigate ]; then
            rows=$(sqlite3 "$d/config/frigate.db" "SELECT count(*) FROM recordings")
            [ "$rows" = "$SEGMENTS" ] || { echo "rs02 has $rows rows, expected $SEGMENTS"; exit 1; }
        fi
    done
done
