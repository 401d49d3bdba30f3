#!/usr/bin/env bash
# hafill backfill vs rsync -a over ssh, on loopback, in one run.
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
# Usage: benches/compare.sh [WORKDIR]     (needs root for apt and sshd)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-$(mktemp -d /var/tmp/hafill-compare.XXXX)}
cameras=${CAMERAS:-8}
minutes=${MINUTES:-9}
mkdir -p "$work"
trap 'kill $(jobs -p) 2>/dev/null || true; [ -f "$work/sshd.pid" ] && kill "$(cat "$work/sshd.pid")" 2>/dev/null || true' EXIT

need=()
command -v rsync >/dev/null || need+=(rsync)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo build --release --quiet
hafill=$PWD/target/release/hafill

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

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }

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

run_set() { # segment length
  local seg=$1 set=$work/set-$1
  rm -rf "$set" && mkdir -p "$set/rs01" "$set/rs02"
  local id1 id2
  id1=$("$hafill" keygen --out "$set/rs01" --name rs01 2>/dev/null)
  id2=$("$hafill" keygen --out "$set/rs02" --name rs02 2>/dev/null)
  config "$set/rs01" rs01 17501 rs02 17502 "$id2"
  config "$set/rs02" rs02 17502 rs01 17501 "$id1"
  HAFILL_LOG=warn "$hafill" sim record --store "$set/rs01/store" --cameras "$cameras" --bitrate 4Mbit \
    --segment "$seg" --from "$from" --to "$to" --seed 7 >/dev/null
  local bytes files
  bytes=$(python3 -c 'import os,sys; print(sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(sys.argv[1]) for f in fs if f.endswith(".seg")))' "$set/rs01/store/segments")
  files=$(find "$set/rs01/store/segments" -name '*.seg' | wc -l)

  HAFILL_LOG=warn "$hafill" serve --config "$set/rs01/hafill.toml" & local sp=$!
  sleep 0.5
  drop_caches
  local out; out=$(HAFILL_LOG=warn "$hafill" backfill --config "$set/rs02/hafill.toml" --since "$from" --json ${HAFILL_ARGS:-})
  kill $sp; wait $sp 2>/dev/null || true
  local hs hb
  hs=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["seconds"])' "$out")
  hb=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["bytes"])' "$out")

  rm -rf "$set/rsync-dst" && mkdir -p "$set/rsync-dst"
  drop_caches
  local t0 t1
  t0=$(date +%s.%N)
  rsync -a -e "$ssh_cmd" "$set/rs01/store/segments/" "root@127.0.0.1:$set/rsync-dst/"
  t1=$(date +%s.%N)
  sync
  t2=$(date +%s.%N)
  local rs rd; rs=$(python3 -c "print($t1 - $t0)"); rd=$(python3 -c "print($t2 - $t0)")
  python3 - "$seg" "$files" "$bytes" "$hb" "$hs" "$rs" "$rd" <<'PY'
import sys
seg, files, total, hb, hs, rs, rd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6]), float(sys.argv[7])
assert hb == total, f"hafill moved {hb} bytes, set holds {total}"
h, r, d = hb / hs / 2**20, total / rs / 2**20, total / rd / 2**20
print(f"{seg:>4} segments: {files} files, {total/2**30:.2f} GiB | hafill {hs:6.2f} s {h:7.1f} MiB/s | "
      f"rsync+ssh {rs:6.2f} s {r:7.1f} MiB/s, ratio {h/r:.2f}x | rsync+ssh then sync {rd:6.2f} s {d:7.1f} MiB/s, ratio {h/d:.2f}x")
PY
  echo "$hb $hs" > "$set/hafill.result"
}

echo "hafill vs rsync -a over ssh on loopback ($(nproc) cores), $cameras cameras x $minutes min at 4 Mbit/s"
run_set 60s
run_set 10s
python3 - "$work/set-60s/hafill.result" "$work/set-10s/hafill.result" <<'PY'
import sys
(b60, s60), (b10, s10) = [map(float, open(p).read().split()) for p in sys.argv[1:3]]
print(f"10-second set rate / 60-second set rate (hafill): {(b10/s10)/(b60/s60):.2f}")
PY
