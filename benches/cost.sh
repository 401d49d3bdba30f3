#!/usr/bin/env bash
# What a backfill costs: CPU seconds per GB moved on each side (the serving
# `hafill serve` and the receiving `hafill backfill`, user + system, from
# /proc/PID/stat), the rate, and the serving side's peak resident memory
# (VmHWM), on loopback with page caches dropped before every run.
#
# Data: CAMERAS (default 8) x MINUTES (default 9) of 4 Mbit/s synthetic
# recordings in SEGMENT-long segments (default 60s; about 2.2 GB); rs02
# holds nothing and backfills all of it from rs01 with HAFILL_ARGS
# (default: none).
#
# LISTS=cold (the default) removes rs01's kept block lists before every
# run, so each segment is hashed as it is first served, as in a backfill
# of a recorder's own segments; LISTS=kept keeps them from run to run, as
# when segments are served again (to another peer, or backfilled ones).
#
# One build, or two taking turns (BUILDS="old=/path/a new=/path/b"), ROUNDS
# (default 3) each; the last lines are the medians per build.
#
# Usage: benches/cost.sh [WORKDIR]       (as root, to drop page caches)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-}
own_work=
[ -n "$work" ] || { work=$(mktemp -d /var/tmp/hafill-cost.XXXX); own_work=1; }
cameras=${CAMERAS:-8}
minutes=${MINUTES:-9}
rounds=${ROUNDS:-3}
segment=${SEGMENT:-60s}
mkdir -p "$work"
trap 'kill $(jobs -p) 2>/dev/null || true; [ -z "$own_work" ] || rm -rf "$work"' EXIT
. benches/quiet.sh
[ -x /usr/bin/time ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null; }

if [ -z "${BUILDS:-}" ]; then
    cargo build --release --quiet
    BUILDS="this=$PWD/target/release/hafill"
fi
first=${BUILDS%% *}; hafill=${first#*=}

config() { # dir name port peer peer_port peer_id
    cat > "$1/hafill.toml" <<CFG
[server]
name = "$2"
listen = "127.0.0.1:$3"
store = "store"
key = "key.pem"
cert = "cert.pem"

[[peer]]
name = "$4"
addr = "127.0.0.1:$5"
id = "$6"

[[camera]]
id = "cam-*"
servers = ["rs01", "rs02"]
CFG
}

to=$(date -u -d "$(date -u +%Y-%m-%dT%H:%M:00Z) - 2 minutes" +%Y-%m-%dT%H:%M:%SZ)
from=$(date -u -d "$to - $minutes minutes" +%Y-%m-%dT%H:%M:%SZ)
mkdir -p "$work/rs01" "$work/rs02"
id1=$("$hafill" keygen --out "$work/rs01" --name rs01 2>/dev/null)
id2=$("$hafill" keygen --out "$work/rs02" --name rs02 2>/dev/null)
config "$work/rs01" rs01 17601 rs02 17602 "$id2"
config "$work/rs02" rs02 17602 rs01 17601 "$id1"
HAFILL_LOG=warn "$hafill" sim record --store "$work/rs01/store" --cameras "$cameras" --bitrate 4Mbit \
    --segment "$segment" --from "$from" --to "$to" --seed 7 >/dev/null

# CPU seconds (user + system) of a live process.
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat"; }

run() { # label binary -> appends "label bytes seconds serve_cpu backfill_cpu serve_hwm_kib"
    local label=$1 bin=$2
    rm -rf "$work/rs02/store"
    [ "${LISTS:-cold}" = kept ] || rm -rf "$work/rs01/store/outboard"
    "$bin" store init --store "$work/rs02/store" >/dev/null
    HAFILL_LOG=warn "$bin" serve --no-scrub --cpu normal --config "$work/rs01/hafill.toml" & local sp=$!
    sleep 0.5
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    wait_for_quiet 3 30 >/dev/null
    local s0 out
    s0=$(cpu_of "$sp")
    # The receiver's own CPU time, from its rusage as it exits.
    out=$( { HAFILL_LOG=warn /usr/bin/time -f "%U %S" "$bin" backfill --config "$work/rs02/hafill.toml" \
        --since "$from" --cpu normal --json ${HAFILL_ARGS:-} 2>&3; } 3>&1 1>"$work/out.json" )
    local s1 hwm
    s1=$(cpu_of "$sp")
    hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$sp/status")
    kill "$sp"; wait "$sp" 2>/dev/null || true
    python3 - "$label" "$work/out.json" "$s0" "$s1" "$hwm" "$out" >> "$work/runs" <<'PY'
import json, sys
label, path, s0, s1, hwm, rusage = sys.argv[1:]
d = json.load(open(path))
user, sys_ = map(float, rusage.split()[-2:])
print(label, d["bytes"], d["seconds"], float(s1) - float(s0), user + sys_, hwm)
PY
    tail -1 "$work/runs" | awk '{ gb = $2 / 1e9; printf "%-6s %.2f GB in %.2f s, %6.1f MiB/s | CPU per GB: serve %.2f s, backfill %.2f s, both %.2f s | serve peak %d MiB\n", $1, gb, $3, $2 / $3 / 1048576, $4 / gb, $5 / gb, ($4 + $5) / gb, $6 / 1024 }'
}

echo "backfill cost on loopback ($(nproc) cores), $cameras cameras x $minutes min at 4 Mbit/s in $segment segments, $rounds rounds, block lists ${LISTS:-cold}"
for r in $(seq "$rounds"); do
    # Builds take turns, in a different order each round.
    builds=($BUILDS)
    [ $((r % 2)) -eq 0 ] && builds=($(printf '%s\n' "${builds[@]}" | tac))
    for b in "${builds[@]}"; do run "${b%%=*}" "${b#*=}"; done
done
python3 - "$work/runs" <<'PY'
import sys, statistics as st
runs = {}
for l in open(sys.argv[1]):
    label, b, s, sc, bc, hwm = l.split()
    runs.setdefault(label, []).append((int(b), float(s), float(sc), float(bc), int(hwm)))
for label, rs in runs.items():
    gb = [r[0] / 1e9 for r in rs]
    rate = st.median(r[0] / r[1] / 2**20 for r in rs)
    serve = st.median(r[2] / g for r, g in zip(rs, gb))
    back = st.median(r[3] / g for r, g in zip(rs, gb))
    both = st.median((r[2] + r[3]) / g for r, g in zip(rs, gb))
    hwm = max(r[4] for r in rs) / 1024
    print(f"median {label:<6} {rate:6.1f} MiB/s | CPU per GB: serve {serve:.2f} s, backfill {back:.2f} s, both {both:.2f} s | serve peak (max) {hwm:.0f} MiB")
PY
