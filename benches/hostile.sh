#!/usr/bin/env bash
# The honest peer's rate beside a hostile one, against its rate alone.
#
# rs01 (honest) and rs03 (hostile: `hafill sim hostile`) hold the same
# recordings; rs02 holds none. First rs02 backfills from rs01 alone; then,
# for each lie, from both at once. The issue's target: with the liar there,
# the backfill completes identical at no less than half the solo rate.
#
# Usage: benches/hostile.sh [WORKDIR]
#   CAMERAS (4), MINUTES (10), BITRATE (8Mbit): the data (about 2.3 GB)
#   LIES ("stall drip bad-block wrong-hash oversized extra")
#   STALL (10s): the receiver's --stall-timeout
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-$(mktemp -d /var/tmp/hafill-hostile.XXXX)}
cameras=${CAMERAS:-4}
minutes=${MINUTES:-10}
bitrate=${BITRATE:-8Mbit}
lies=${LIES:-stall drip bad-block wrong-hash oversized extra}
stall=${STALL:-10s}
mkdir -p "$work"
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT

cargo build --release --quiet
hafill=$PWD/target/release/hafill
declare -A port=([rs01]=7611 [rs02]=7612 [rs03]=7613) id
for n in rs01 rs02 rs03; do
  mkdir -p "$work/$n"
  id[$n]=$("$hafill" keygen --out "$work/$n" --name "$n" 2>/dev/null)
done
for n in rs01 rs02 rs03; do
  {
    printf '[server]\nname = "%s"\nlisten = "127.0.0.1:%s"\nstore = "store"\nkey = "key.pem"\ncert = "cert.pem"\nstatus = "off"\n\n' "$n" "${port[$n]}"
    for o in rs01 rs02 rs03; do
      [ "$o" = "$n" ] && continue
      printf '[[peer]]\nname = "%s"\naddr = "127.0.0.1:%s"\nid = "%s"\n\n' "$o" "${port[$o]}" "${id[$o]}"
    done
    printf '[[camera]]\nid = "cam-*"\nservers = ["rs01", "rs02", "rs03"]\n'
  } > "$work/$n/hafill.toml"
done
for n in rs01 rs03; do
  "$hafill" sim record --store "$work/$n/store" --cameras "$cameras" --bitrate "$bitrate" \
    --from "-${minutes}m" --to now --seed 3 --json > /dev/null
done

HAFILL_LOG=warn "$hafill" serve --config "$work/rs01/hafill.toml" --no-scrub 2> "$work/rs01.log" &
sleep 1

backfill() { # label [args] -> prints segments, seconds, MiB/s, who was cut off
  local label=$1; shift
  rm -rf "$work/rs02/store"
  "$hafill" store init --store "$work/rs02/store" >/dev/null
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  HAFILL_LOG=error "$hafill" backfill --config "$work/rs02/hafill.toml" --json --stall-timeout "$stall" "$@" > "$work/report.json"
  python3 - "$label" "$work/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[2]))
cut = [p["peer"] for p in r["peers"] if (p.get("error") or "").startswith("cut off")]
print(f'{sys.argv[1]:<12} {r["segments"]:>5} segments {r["bytes"]/2**20:>8.0f} MiB {r["seconds"]:>6.1f} s {r["rate_mib_s"]:>7.1f} MiB/s  failed {len(r["failed"])}  cut off {",".join(cut) or "-"}')
PY
}

echo "data: $cameras cameras x $minutes min at $bitrate; receiver --stall-timeout $stall"
backfill solo --from rs01 | tee "$work/solo.txt"
solo=$(python3 -c 'import json;print(json.load(open("'"$work"'/report.json"))["rate_mib_s"])')
for lie in $lies; do
  HAFILL_LOG=warn "$hafill" sim hostile --config "$work/rs03/hafill.toml" --lie "$lie" 2> "$work/rs03-$lie.log" &
  h=$!
  sleep 1
  backfill "$lie"
  rate=$(python3 -c 'import json;print(json.load(open("'"$work"'/report.json"))["rate_mib_s"])')
  python3 -c "print(f'  {\"$lie\"}: {${rate}/${solo}:.2f} of the solo rate')"
  kill "$h"; wait "$h" 2>/dev/null || true
done
