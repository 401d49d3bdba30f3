#!/usr/bin/env bash
# The test suite: unit, property and integration tests over the whole
# workspace (real ffmpeg segments, a real headless chromium where
# installed), then the Prometheus alerting rules in dist/ through promtool.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace

echo "== dist/prometheus: the alerting rules (promtool check rules, promtool test rules)"
if command -v promtool >/dev/null; then
    promtool check rules dist/prometheus/hafill-alerts.yml
    (cd dist/prometheus && promtool test rules hafill-alerts.test.yml)
else
    echo "skipped: no promtool here (Debian: apt-get install prometheus)"
fi
