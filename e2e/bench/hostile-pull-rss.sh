#!/usr/bin/env bash
# Hostile pulls against a release crius: peak RSS over idle RSS per pull,
# what each pull leaves in the image store, and whether crius keeps serving.
#
#   e2e/bench/hostile-pull-rss.sh [CASE...]      (as root; cases: long-name
#   long-link pax config bomb honest; all by default)
#
# Needs nothing outside the repository: the images are generated as streams
# and served by a fake registry inside the benchmark (examples/
# hostile_pull_rss.rs); crius runs with default settings on throwaway
# directories under $TMPDIR. CRIUS_BIN runs another crius binary (an older
# build, for comparison). The bomb case writes up to the default layer cap
# (16 GiB) to $TMPDIR before crius refuses it; it and the 2 GiB cases take a
# few minutes. Exits 1 if a hostile pull is accepted, peaks 100 MB or more
# above idle, leaves anything in the store, or crius stops answering.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --locked --release -p crius
cargo build --locked --release -p crius-e2e --example hostile_pull_rss
exec target/release/examples/hostile_pull_rss "$@"
