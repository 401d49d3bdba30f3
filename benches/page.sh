#!/usr/bin/env bash
# The operator's page at site scale: its weight, and the time Debian's
# chromium (headless) takes to parse its data and draw it the first time.
#
# The page is engine/src/page.html with a synthetic site inside, as
# `hafill status --html` would write it: CAMERAS (default 500) cameras on
# 2 servers, a day of each, recorded with a few gaps; on the second server
# a 6-hour outage being backfilled (backfilled, reserved, missing and in
# flight), so every kind of span is drawn. It is loaded from a file, so the
# figures are the page's own, not the network's.
#
# Prints the page's weight (raw and gzip), then, for 50 and for all cameras
# a page, the median over ROUNDS (default 5) loads of the page's own
# measure (script start to the end of its first draw, `data-first-render-ms`)
# and of the browser's whole run (start, load, exit).
#
# Needs python3 and chromium. Usage: benches/page.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cameras=${CAMERAS:-500}
rounds=${ROUNDS:-5}
command -v python3 >/dev/null || { echo "needs python3"; exit 1; }
browser=$(command -v chromium || command -v chromium-browser || true)
[ -n "$browser" ] || { echo "needs chromium (apt-get install chromium)"; exit 1; }
work=$(mktemp -d /tmp/hafill-page.XXXX)
trap 'rm -rf "$work"' EXIT

python3 - "$cameras" engine/src/page.html "$work/page.html" <<'PY'
import json, random, sys
cameras, template, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
rnd = random.Random(7)
us = 1_000_000
to = 1_764_700_000 * us
frm = to - 86_400 * us
outage = (to - 8 * 3600 * us, to - 2 * 3600 * us)
def recorded(holes):
    spans, t = [], frm
    for _ in range(holes):
        a = rnd.randrange(t, to - 600 * us)
        spans.append({"start": t, "end": a, "kind": "recorded"})
        t = a + rnd.randrange(60, 600) * us
        if t >= to: break
    spans.append({"start": t, "end": to, "kind": "recorded"})
    return [s for s in spans if s["end"] > s["start"]]
cams, alerts = [], []
for i in range(cameras):
    cid = f"cam-{i+1:04d}"
    a = recorded(rnd.randrange(0, 3))
    b = [s for s in recorded(rnd.randrange(0, 3)) if s["end"] <= outage[0] or s["start"] >= outage[1]]
    o0, o1 = outage
    third = (o1 - o0) // 3
    b += [{"start": o0, "end": o0 + third, "kind": "backfilled", "peer": "rs01"},
          {"start": o0 + third, "end": o0 + 2 * third, "kind": "reserved"},
          {"start": o0 + third, "end": o0 + third + 60 * us, "kind": "in-flight", "peer": "rs01"},
          {"start": o0 + 2 * third, "end": o1, "kind": "missing"}]
    b.sort(key=lambda s: s["start"])
    gap = 2 * third + (o1 - o0 - 3 * third)
    cams.append({"camera": cid, "name": f"Camera {i+1}", "servers": [
        {"server": "rs01", "reachable": True, "here": False, "spans": a, "gap_us": 0},
        {"server": "rs02", "reachable": True, "here": True, "spans": b, "gap_us": gap}]})
    if i % 25 == 0:
        alerts.append({"severity": "warning", "kind": "overflow", "camera": cid, "server": "rs02",
                       "message": f"{cid}: rs02 has recent holes while rs01 records it"})
iso = "2025-12-02T18:26:40Z"
status = {"server": "rs02", "at": iso, "from": iso, "to": iso,
          "peers": [{"peer": "rs01", "connected": True, "error": None}],
          "overview": {"cameras": cameras, "recording": cameras, "mismatched": [], "disconnected": [],
                       "overflow": [a["camera"] + "@rs02" for a in alerts], "alerts": {"warning": len(alerts)}},
          "alerts": alerts}
progress = {"pending_segments": cameras * 240, "pending_bytes": cameras * 240 * 30_000_000,
            "rate": 400e6, "eta_seconds": cameras * 240 * 30_000_000 / 400e6,
            "peers": [{"peer": "rs01", "bytes": 10**12, "segments": 30000, "rate": 400e6, "in_flight": 8}],
            "in_flight": []}
boot = {"live": False, "poll_ms": 5000, "retention_s": 30 * 86400, "status": status,
        "timeline": {"server": "rs02", "at": iso, "from_us": frm, "to_us": to, "cameras": cams, "progress": progress}}
data = json.dumps(boot, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
page = open(template).read().replace("/*HAFILL-DATA*/", data, 1)
open(out, "w").write(page)
PY

own=$(wc -c < engine/src/page.html)
raw=$(wc -c < "$work/page.html")
gz=$(gzip -1c "$work/page.html" | wc -c)
echo "page alone: $own bytes; with $cameras cameras x 2 servers inside: $raw bytes, $gz as the daemon sends it (gzip -1)"

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
for per in 50 500; do
    renders=() walls=()
    for _ in $(seq "$rounds"); do
        t0=$(date +%s.%N)
        dom=$("$browser" --headless --no-sandbox --disable-gpu --no-first-run --disable-dev-shm-usage \
            --user-data-dir="$work/profile" --virtual-time-budget=10000 --window-size=1400,900 \
            --dump-dom "file://$work/page.html?per_page=$per" 2>/dev/null)
        t1=$(date +%s.%N)
        ms=$(grep -o 'data-first-render-ms="[0-9.]*"' <<<"$dom" | grep -o '[0-9.]*' || true)
        rows=$(grep -o 'class="row"' <<<"$dom" | wc -l)
        [ -n "$ms" ] || { echo "the page did not draw"; exit 1; }
        renders+=("$ms")
        walls+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { print (b - a) * 1000 }')")
    done
    echo "$per cameras a page ($rows bars drawn): first render $(printf '%s\n' "${renders[@]}" | median) ms (median of $rounds; ${renders[*]}), browser run $(printf '%s\n' "${walls[@]}" | median | cut -d. -f1) ms"
done
