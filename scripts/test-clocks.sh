#!/usr/bin/env bash
# Runs the integration tests whose data is placed relative to "now" under
# other wall clocks (Debian's `faketime`), so that a test whose outcome
# depends on the hour or the date fails here rather than at some hour in CI.
#
#   ./scripts/test-clocks.sh                    # the default tests and clocks
#   TESTS="gate_reserve plan_outage" CLOCKS="2026-12-01 22:30:00" ./scripts/test-clocks.sh
#
# Each clock starts the fake time at that moment and lets it run on; the
# monotonic clock stays real (timeouts are real time). The test processes and
# every `hafill` they start see the fake time.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v faketime >/dev/null; then
    echo "SKIPPED test-clocks: faketime is not installed (apt-get install faketime)"
    exit 0
fi

TESTS=${TESTS:-"gate_reserve plan_outage ha_status store_rebuild transfer_security recorder_segments recorder_frigate"}
# The hour where placement once depended on the clock; a minute before an
# hour and a day; the end of February in a year that is not a leap year.
CLOCKS=${CLOCKS:-"2026-12-01 22:30:00|2026-12-02 05:59:30|2027-02-28 23:58:00"}

args=()
for t in $TESTS; do args+=(--test "$t"); done
# Built once, with the real clock (cargo's own freshness checks need it).
cargo test "${args[@]}" --no-run

IFS='|' read -r -a clocks <<<"$CLOCKS"
for clock in "${clocks[@]}"; do
    echo "== tests at $clock UTC: $TESTS"
    set +e
    TZ=UTC FAKETIME_DONT_FAKE_MONOTONIC=1 faketime -f "@$clock" \
        cargo test --offline "${args[@]}" 2>&1 | tee /tmp/hafill-test-clocks.log |
        grep -E "^test |test result|panicked|SKIPPED"
    status=${PIPESTATUS[0]}
    set -e
    if [ "$status" -ne 0 ]; then
        echo "FAILED at $clock (full output: /tmp/hafill-test-clocks.log)"
        exit 1
    fi
done
echo "== every clock passed"
