#!/usr/bin/env bash
# hafill backfill vs rsync -a over ssh and vs a plain local copy (the
# ceiling), on loopback, in one run.
#
# Data: SIZE_GB (default 2.2) of synthetic 4 Mbit/s recordings in 60-second
# segments, and the same span of the same cameras in 10-second segments.
# For each set: rs01 holds it all, rs02 nothing; hafill backfills rs02 from
# rs01, rsync copies rs01's segment tree over ssh to an empty folder. Page
# caches are dropped before every run (as root), so both read from disk.
#
# hafill's time includes making every segment durable (fsync) before it
# counts; rsync's ends with its copy still in the page cache. So the script
# also times rsync followed by `sync` (its copy on disk too), and prints
# the ratio against both.
#
# The ceiling: `cp -r` of the same segment tree to a fresh folder, then
# `sync`, from a cold cache: the same bytes made durable on the same disk,
# with no network, no crypto and no hashing.
#
# sendme (iroh, BLAKE3-verified QUIC): when `sendme` is installed
# (`cargo install sendme`, or SENDME=PATH), the same tree is sent with the
# relay disabled and the ticket's loopback address only, received into an
# empty folder (its export to that folder included), then `sync`. The
# sender's import (it hashes the tree before it prints a ticket) is not
# counted, as hafill's kept block lists are not; it is printed apart.
#
# CPU: for each run, the machine's busy CPU time (user, nice, system, irq,
# softirq in /proc/stat) over the run, per GB moved: both ends of each
# tool together, with the kernel's work for them (and anything else that
# ran meanwhile; the script waits for a quiet spell first).
#
# ROUNDS (default 3): each round runs the three on both sets, taking
# turns; the last lines are the medians over the rounds. LOGS=DIR keeps
# each hafill backfill's debug log there (DIR/hafill-60s-1.log, ...): its
# `throttle` lines show what the adaptive disk control saw and did.
#
# Usage: benches/compare.sh [WORKDIR]     (needs root for apt and sshd)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-}
own_work=
[ -n "$work" ] || { work=$(mktemp -d /var/tmp/hafill-compare.XXXX); own_work=1; }
cameras=${CAMERAS:-8}
minutes=${MINUTES:-9}
rounds=${ROUNDS:-3}
mkdir -p "$work"
trap 'kill $(jobs -p) 2>/dev/null || true; [ -f "$work/sshd.pid" ] && kill "$(cat "$work/sshd.pid")" 2>/dev/null || true; [ -z "$own_work" ] || rm -rf "$work"' EXIT

need=()
command -v rsync >/dev/null || need+=(rsync)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo build --release --quiet
hafill=$PWD/target/release/hafill
sendme=${SENDME:-$(command -v sendme || true)}
[ -n "$sendme" ] || echo "sendme: not installed (cargo install sendme); its columns are left out"

# sshd on loopback port 2222 with a throwaway key.
ssh-keygen -q -t ed25519 -N '' -f "$work/host_key" <<<y >/dev/null 2>&1 || true
ssh-keygen -q -t ed25519 -N '' -f "$work/client_key" <<<y >/dev/null 2>&1 || true
mkdir -p /root/.ssh /run/sshd && chmod 700 /root/.ssh
grep -qF "$(cat "$work/client_key.pub")" /root/.ssh/authorized_keys 2>/dev/null || cat "$work/client_key.pub" >> /root/.ssh/authorized_keys
cat > "$work/sshd_config" <<CFG
Port 2222
ListenAddress 127.0.0.1
HostKey $work/host_key
PidFile $work/sshd.pid
PermitRootLogin prohibit-password
PasswordAuthentication no
UsePAM no
CFG
/usr/sbin/sshd -f "$work/sshd_config"
ssh_cmd="ssh -p 2222 -i $work/client_key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"

# cpu_times, steal_pct, wait_for_quiet.
. benches/quiet.sh
# Page caches dropped, then (at most 30 s) a quiet 3-second spell.
drop_caches() {
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  wait_for_quiet 3 30 >/dev/null
}

# Busy CPU seconds of the whole machine so far.
busy_cpu() { awk -v hz="$(getconf CLK_TCK)" '/^cpu / { print ($2 + $3 + $4 + $7 + $8) / hz }' /proc/stat; }

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

make_set() { # segment length: rs01 holds the recording, rs02 is configured
  local seg=$1 set=$work/set-$1
  rm -rf "$set" && mkdir -p "$set/rs01" "$set/rs02"
  local id1 id2
  id1=$("$hafill" keygen --out "$set/rs01" --name rs01 2>/dev/null)
  id2=$("$hafill" keygen --out "$set/rs02" --name rs02 2>/dev/null)
  config "$set/rs01" rs01 17501 rs02 17502 "$id2"
  config "$set/rs02" rs02 17502 rs01 17501 "$id1"
  HAFILL_LOG=warn "$hafill" sim record --store "$set/rs01/store" --cameras "$cameras" --bitrate 4Mbit \
    --segment "$seg" --from "$from" --to "$to" --seed 7 >/dev/null
  python3 -c 'import os,sys; print(sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(sys.argv[1]) for f in fs if f.endswith(".seg")))' "$set/rs01/store/segments" > "$set/bytes"
  find "$set/rs01/store/segments" -name '*.seg' | wc -l > "$set/files"
}

run_hafill() { # segment length -> appends "bytes seconds steal% cpu_seconds" to set/hafill.runs
  local set=$work/set-$1
  rm -rf "$set/rs02/store"
  "$hafill" store init --store "$set/rs02/store" >/dev/null
  HAFILL_LOG=warn "$hafill" serve --no-scrub --config "$set/rs01/hafill.toml" & local sp=$!
  sleep 0.5
  drop_caches
  local a b out c0 c1
  a=$(cpu_times); c0=$(busy_cpu)
  if [ -n "${LOGS:-}" ]; then
    mkdir -p "$LOGS"
    out=$(HAFILL_LOG=debug "$hafill" backfill --config "$set/rs02/hafill.toml" --since "$from" --json ${HAFILL_ARGS:-} \
      2>"$LOGS/hafill-$1-$(( $(wc -l < "$set/hafill.runs" 2>/dev/null || echo 0) + 1 )).log")
  else
    out=$(HAFILL_LOG=warn "$hafill" backfill --config "$set/rs02/hafill.toml" --since "$from" --json ${HAFILL_ARGS:-})
  fi
  b=$(cpu_times); c1=$(busy_cpu)
  kill $sp; wait $sp 2>/dev/null || true
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["bytes"], d["seconds"], sys.argv[2], float(sys.argv[4]) - float(sys.argv[3]))' "$out" "$(steal_pct "$a" "$b")" "$c0" "$c1" >> "$set/hafill.runs"
}

run_rsync() { # segment length -> appends "seconds seconds-with-sync steal% cpu_seconds" to set/rsync.runs
  local set=$work/set-$1
  rm -rf "$set/rsync-dst" && mkdir -p "$set/rsync-dst"
  drop_caches
  local t0 t1 t2 a b c0 c1
  a=$(cpu_times); c0=$(busy_cpu)
  t0=$(date +%s.%N)
  rsync -a -e "$ssh_cmd" "$set/rs01/store/segments/" "root@127.0.0.1:$set/rsync-dst/"
  t1=$(date +%s.%N)
  b=$(cpu_times)
  sync
  t2=$(date +%s.%N); c1=$(busy_cpu)
  python3 -c "print($t1 - $t0, $t2 - $t0, $(steal_pct "$a" "$b"), $c1 - $c0)" >> "$set/rsync.runs"
  rm -rf "$set/rsync-dst"
}

run_copy() { # segment length -> appends "seconds cpu_seconds" to set/copy.runs
  local set=$work/set-$1
  rm -rf "$set/copy-dst"
  drop_caches
  local t0 t1 c0 c1
  c0=$(busy_cpu); t0=$(date +%s.%N)
  cp -r "$set/rs01/store/segments" "$set/copy-dst"
  sync
  t1=$(date +%s.%N); c1=$(busy_cpu)
  python3 -c "print($t1 - $t0, $c1 - $c0)" >> "$set/copy.runs"
  rm -rf "$set/copy-dst"
}

run_sendme() { # segment length -> appends "seconds cpu_seconds import_seconds" to set/sendme.runs
  [ -n "$sendme" ] || return 0
  local set=$work/set-$1
  rm -rf "$set/sendme-dst" "$set"/.sendme-* && mkdir -p "$set/sendme-dst"
  local t0 t1 c0 c1 ti ticket sp
  ti=$(date +%s.%N)
  (cd "$set/rs01/store" && exec "$sendme" send --relay disabled --ticket-type addresses --no-progress \
    --magic-ipv4-addr 127.0.0.1:17600 segments > "$set/sendme-send.out" 2>&1) & sp=$!
  for _ in $(seq 600); do
    ticket=$(grep -o 'sendme receive [a-z0-9]*' "$set/sendme-send.out" | awk '{print $3}' || true)
    [ -n "$ticket" ] && break
    sleep 0.5
  done
  [ -n "$ticket" ] || { echo "sendme send printed no ticket: $(cat "$set/sendme-send.out")" >&2; exit 1; }
  ti=$(python3 -c "print($(date +%s.%N) - $ti)")
  drop_caches
  c0=$(busy_cpu); t0=$(date +%s.%N)
  (cd "$set/sendme-dst" && "$sendme" receive --relay disabled --no-progress "$ticket" >/dev/null 2>&1)
  sync
  t1=$(date +%s.%N); c1=$(busy_cpu)
  kill $sp 2>/dev/null; wait $sp 2>/dev/null || true
  local got
  got=$(python3 -c 'import os,sys; print(sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(sys.argv[1]) for f in fs if f.endswith(".seg")))' "$set/sendme-dst/segments")
  [ "$got" = "$(cat "$set/bytes")" ] || { echo "sendme delivered $got bytes of $(cat "$set/bytes")" >&2; exit 1; }
  python3 -c "print($t1 - $t0, $c1 - $c0, $ti)" >> "$set/sendme.runs"
  rm -rf "$set/sendme-dst" "$set/rs01/store"/.sendme-*
}

echo "hafill vs rsync -a over ssh and cp -r on loopback ($(nproc) cores), $cameras cameras x $minutes min at 4 Mbit/s, $rounds rounds"
for seg in 60s 10s; do make_set $seg; done
# The tools take turns, round after round, so that a slow spell of the
# machine (this VM's disk writes vary 300-1,400 MB/s from minute to minute)
# falls on both; the summary compares medians.
for r in $(seq "$rounds"); do
  for seg in 60s 10s; do
    case $((r % 3)) in
      1) run_hafill $seg; run_rsync $seg; run_copy $seg; run_sendme $seg ;;
      2) run_rsync $seg; run_sendme $seg; run_copy $seg; run_hafill $seg ;;
      0) run_sendme $seg; run_copy $seg; run_hafill $seg; run_rsync $seg ;;
    esac
    python3 - "$work/set-$seg" "$seg" "$r" <<'PY'
import sys
d, seg, r = sys.argv[1], sys.argv[2], sys.argv[3]
total = int(open(f"{d}/bytes").read())
gb = total / 1e9
hb, hs, hsteal, hc = open(f"{d}/hafill.runs").read().split("\n")[-2].split()
rs, rd, rsteal, rc = map(float, open(f"{d}/rsync.runs").read().split("\n")[-2].split())
cs, cc = map(float, open(f"{d}/copy.runs").read().split("\n")[-2].split())
assert int(hb) == total, f"hafill moved {hb} bytes, set holds {total}"
h, r_, d_, c_ = total / float(hs) / 2**20, total / rs / 2**20, total / rd / 2**20, total / cs / 2**20
line = f"round {r} {seg:>4}: hafill {float(hs):6.2f} s {h:6.1f} MiB/s {float(hc)/gb:.2f} CPU s/GB (steal {float(hsteal):.1f}%) | rsync+ssh {rs:6.2f} s {r_:6.1f} MiB/s (steal {rsteal:.1f}%) ({h/r_:.2f}x) | rsync+ssh then sync {rd:6.2f} s {d_:6.1f} MiB/s {rc/gb:.2f} CPU s/GB ({h/d_:.2f}x) | cp -r then sync {cs:6.2f} s {c_:6.1f} MiB/s {cc/gb:.2f} CPU s/GB ({h/c_:.2f}x)"
try:
    ss, sc, si = map(float, open(f"{d}/sendme.runs").read().split("\n")[-2].split())
    s_ = total / ss / 2**20
    line += f" | sendme then sync {ss:6.2f} s {s_:6.1f} MiB/s {sc/gb:.2f} CPU s/GB ({h/s_:.2f}x; its import {si:.1f} s)"
except FileNotFoundError:
    pass
print(line)
PY
  done
done
python3 - "$work" <<'PY'
import os, sys, statistics as st
work = sys.argv[1]
rate = {}
for seg in ("60s", "10s"):
    d = f"{work}/set-{seg}"
    total, files = int(open(f"{d}/bytes").read()), int(open(f"{d}/files").read())
    runs = lambda tool: [l.split() for l in open(f"{d}/{tool}.runs") if l.strip()]
    gb = total / 1e9
    h = st.median(total / float(l[1]) / 2**20 for l in runs("hafill"))
    hc = st.median(float(l[3]) / gb for l in runs("hafill"))
    r = st.median(total / float(l[0]) / 2**20 for l in runs("rsync"))
    s = st.median(total / float(l[1]) / 2**20 for l in runs("rsync"))
    rc = st.median(float(l[3]) / gb for l in runs("rsync"))
    c = st.median(total / float(l[0]) / 2**20 for l in runs("copy"))
    cc = st.median(float(l[1]) / gb for l in runs("copy"))
    rate[seg] = h
    line = f"median {seg:>4} ({files} files, {total/2**30:.2f} GiB): hafill {h:6.1f} MiB/s, {hc:.2f} CPU s/GB | rsync+ssh {r:6.1f} MiB/s, ratio {h/r:.2f}x | rsync+ssh then sync {s:6.1f} MiB/s, {rc:.2f} CPU s/GB, ratio {h/s:.2f}x | cp -r then sync (ceiling) {c:6.1f} MiB/s, {cc:.2f} CPU s/GB, ratio {h/c:.2f}"
    if os.path.exists(f"{d}/sendme.runs"):
        m = st.median(total / float(l[0]) / 2**20 for l in runs("sendme"))
        mc = st.median(float(l[1]) / gb for l in runs("sendme"))
        line += f" | sendme then sync {m:6.1f} MiB/s, {mc:.2f} CPU s/GB, ratio {h/m:.2f}x"
    print(line)
print(f"10-second set rate / 60-second set rate (hafill, medians): {rate['10s']/rate['60s']:.2f}")
PY
