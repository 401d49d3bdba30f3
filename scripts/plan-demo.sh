#!/usr/bin/env bash
# Two simulated recording servers of the same cameras, one with an outage,
# and the plan that would make it whole. Runs in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
hafill=target/release/hafill
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
from=$(date -u -d '-1 hour' +%Y-%m-%dT%H:00:00Z)
to=$(date -u -d "$from + 40 minutes" +%Y-%m-%dT%H:%M:%SZ)
outage="$(date -u -d "$from + 10 minutes" +%Y-%m-%dT%H:%M:%SZ)..$(date -u -d "$from + 25 minutes" +%Y-%m-%dT%H:%M:%SZ)"
echo "== rs01 records 16 cameras at 1 Mbit/s, $from to $to"
$hafill sim record --store "$dir/rs01" --cameras 16 --bitrate 1Mbit --segment 60s --from "$from" --to "$to" --seed 7
echo "== rs02 records the same cameras but was down $outage on 6 of them"
$hafill sim record --store "$dir/rs02" --cameras 16 --bitrate 1Mbit --segment 60s --from "$from" --to "$to" --seed 7 \
  --outage "$outage" --outage-cameras 6
echo "== what rs02 is missing, and where to get it"
$hafill plan --store "$dir/rs02" --peer-store "rs01=$dir/rs01"
echo "== rs01's recordings verify"
$hafill store verify --store "$dir/rs01"
