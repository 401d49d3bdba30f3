#!/usr/bin/env bash
# The test suite: unit, property and integration tests over the whole
# workspace, then the benchmarks compiled and run once as smoke tests.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace
