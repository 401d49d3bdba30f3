#!/usr/bin/env bash
# Live protection with a real recorder: what an operator would lose.
#
# STREAMS ffmpeg recorders (`-c copy`, the segment muxer, 10 s MPEG-TS
# segments) each receive a live H.264 MPEG-TS stream over UDP on loopback
# from a second ffmpeg (`-re`, `-c copy`), STREAM_RATE each (default 4 x
# 32 Mbit/s: the bit rate of 16 cameras at 8 Mbit/s). They record LIVE_FOR
# seconds:
#   1. alone (the baseline),
#   2. beside a full-speed `hafill backfill` (adaptive disk control) into
#      the same disk,
#   3. beside one with no adaptive control (`--no-adaptive`).
# For each it reports the video packets the senders sent against those in
# the recorded segments, the recorders' continuity errors and input overruns
# (ffmpeg's own warnings), and the backfill's rate meanwhile.
#
# Run: bash benches/recorder_live.sh
# Knobs: LIVE_FOR (seconds, 30), STREAMS (4), STREAM_RATE (32M),
# SOURCE_MIN (minutes of source for the backfill, 8), HAFILL_BENCH_DIR
# (/var/tmp), MODES ("alone adaptive none"), KEEP (set: keep the work folder
# with every recorder's and sender's log).
set -euo pipefail
cd "$(dirname "$0")/.."
LIVE_FOR=${LIVE_FOR:-30}
STREAMS=${STREAMS:-4}
STREAM_RATE=${STREAM_RATE:-32M}
SOURCE_MIN=${SOURCE_MIN:-8}
MODES=${MODES:-alone adaptive none}
for t in ffmpeg ffprobe python3; do
    command -v $t >/dev/null || { echo "SKIPPED: $t is not installed (apt-get install ffmpeg python3)"; exit 0; }
done

cargo build --release -q
B=$PWD/target/release/hafill
W=$(mktemp -d "${HAFILL_BENCH_DIR:-/var/tmp}/hafill-reclive.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    [ -n "${KEEP:-}" ] && { echo "kept: $W"; return; }
    rm -rf "$W"
}
trap cleanup EXIT
export HAFILL_LOG=${HAFILL_LOG:-error}

echo "== the live source: 20 s of 1280x720 H.264 at $STREAM_RATE, looped"
ffmpeg -hide_banner -loglevel error -f lavfi -i "testsrc2=size=1280x720:rate=25" -t 20 \
    -c:v libx264 -preset ultrafast -g 25 -b:v "$STREAM_RATE" -minrate "$STREAM_RATE" \
    -maxrate "$STREAM_RATE" -bufsize "$STREAM_RATE" -x264-params nal-hrd=cbr \
    -pix_fmt yuv420p -f mpegts "$W/source.ts"
ls -l "$W/source.ts" | awk '{printf "source clip: %.1f MB\n", $5/1e6}'

echo "== the backfill's source: 16 cameras x $SOURCE_MIN minutes at 8 Mbit/s (native store)"
$B keygen --out "$W/rs01" --name rs01 >"$W/id1" 2>/dev/null
$B keygen --out "$W/rs02" --name rs02 >"$W/id2" 2>/dev/null
config() { # name listen peer peer_addr peer_id
    printf '[server]\nname = "%s"\nlisten = "%s"\nstore = "store"\nkey = "key.pem"\ncert = "cert.pem"\nreserve = "1GiB"\nstatus = "off"\n\n[[peer]]\nname = "%s"\naddr = "%s"\nid = "%s"\n\n[[camera]]\nid = "cam-*"\nservers = ["rs01", "rs02"]\n' "$@"
}
config rs01 127.0.0.1:7831 rs02 127.0.0.1:7832 "$(cat "$W/id2")" >"$W/rs01/hafill.toml"
config rs02 127.0.0.1:7832 rs01 127.0.0.1:7831 "$(cat "$W/id1")" >"$W/rs02/hafill.toml"
$B sim record --store "$W/rs01/store" --cameras 16 --bitrate 8Mbit --segment 60s \
    --from "-$((SOURCE_MIN + 30))m" --to -30m --seed 7 | tail -1
sync
nice -n 19 $B serve --no-scrub --config "$W/rs01/hafill.toml" 2>"$W/serve.log" &
PIDS+=($!)
sleep 1

# One mode: recorders, then (but for `alone`) a backfill, then the senders.
run_mode() { # mode
    local mode=$1 dir="$W/rec-$1"
    mkdir -p "$dir"
    local rec=() snd=()
    local bf="" w0=0 t0 w1 t1
    if [ "$mode" != alone ]; then
        rm -rf "$W/rs02/store"
        $B store init --store "$W/rs02/store" >/dev/null
        local flags=""
        [ "$mode" = none ] && flags="--no-adaptive"
        # shellcheck disable=SC2086
        nice -n 10 $B backfill --config "$W/rs02/hafill.toml" --json $flags >"$W/bf-$mode.json" 2>"$W/bf-$mode.log" &
        bf=$!
        PIDS+=("$bf")
        sleep 3
        w0=$(awk '/^write_bytes/ {print $2}' "/proc/$bf/io" 2>/dev/null || echo 0)
    fi
    # The recorders start just before their streams (they give up 3 s after
    # their stream stops, or if it never starts).
    for i in $(seq 1 "$STREAMS"); do
        mkdir -p "$dir/cam$i"
        # Recorders exit 3 s after their stream stops.
        ffmpeg -hide_banner -loglevel warning -nostdin \
            -i "udp://127.0.0.1:$((9100 + i))?fifo_size=1000000&overrun_nonfatal=1&timeout=3000000" \
            -c copy -f segment -segment_time 10 -reset_timestamps 1 -strftime 1 \
            "$dir/cam$i/%Y%m%d-%H%M%S.ts" 2>"$dir/recorder$i.log" &
        rec+=($!)
    done
    PIDS+=("${rec[@]}")
    sleep 0.5
    t0=$(date +%s.%N)
    for i in $(seq 1 "$STREAMS"); do
        ffmpeg -hide_banner -loglevel error -nostdin -progress "$dir/sender$i.progress" \
            -re -stream_loop -1 -i "$W/source.ts" -t "$LIVE_FOR" -c copy -f mpegts \
            "udp://127.0.0.1:$((9100 + i))?pkt_size=1316" 2>"$dir/sender$i.log" &
        snd+=($!)
    done
    for p in "${snd[@]}"; do wait "$p"; done
    t1=$(date +%s.%N)
    if [ -n "$bf" ]; then
        w1=$(awk '/^write_bytes/ {print $2}' "/proc/$bf/io" 2>/dev/null || echo "$w0")
        kill -0 "$bf" 2>/dev/null || echo "warning: the backfill ($mode) finished before the live streams did: record a larger source (SOURCE_MIN)" >&2
        kill "$bf" 2>/dev/null || true
        wait "$bf" 2>/dev/null || true
        python3 -c "print(f'{($w1-$w0)/($t1-$t0)/1048576:.1f}')" >"$W/rate-$mode"
    else
        echo "-" >"$W/rate-$mode"
    fi
    for p in "${rec[@]}"; do wait "$p" || echo "warning: a recorder exited with an error ($mode)" >&2; done
}

for mode in $MODES; do
    echo "== recording: $mode"
    run_mode "$mode"
done
kill "${PIDS[0]}" 2>/dev/null || true

echo
echo "== what live recording lost ($STREAMS streams x $STREAM_RATE, ${LIVE_FOR} s)"
python3 - "$W" "$STREAMS" $MODES <<'PY'
import glob, re, subprocess, sys
w, streams, modes = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def packets(path):
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_packets",
                          "-show_entries", "stream=nb_read_packets", "-of", "csv=p=0", path],
                         capture_output=True, text=True).stdout.strip()
    # One count per program that carries the stream: the first is it.
    return int(out.split()[0]) if out.split() else 0
label = {"alone": "recording alone", "adaptive": "beside adaptive backfill", "none": "beside unthrottled backfill"}
for m in modes:
    d = f"{w}/rec-{m}"
    sent = 0
    for i in range(1, streams + 1):
        prog = open(f"{d}/sender{i}.progress").read()
        frames = [int(x) for x in re.findall(r"^frame=(\d+)", prog, re.M)]
        sent += frames[-1] if frames else 0
    recorded = sum(packets(f) for f in glob.glob(f"{d}/cam*/*.ts"))
    logs = "".join(open(f).read() for f in glob.glob(f"{d}/recorder*.log"))
    cont = len(re.findall(r"[Cc]ontinuity check failed", logs))
    overrun = len(re.findall(r"[Cc]ircular buffer overrun", logs))
    corrupt = len(re.findall(r"[Pp]acket corrupt", logs))
    rate = open(f"{w}/rate-{m}").read().strip()
    lost = sent - recorded
    print(f"{label[m]:<28} video packets sent {sent:6d}  recorded {recorded:6d}  lost {lost:5d} ({lost / sent * 100 if sent else 0:.3f}%)"
          f"  continuity errors {cont:4d}  overruns {overrun:3d}  corrupt {corrupt:3d}  backfill {rate} MiB/s")
PY
