#!/usr/bin/env bash
# fuzz.sh [SECONDS] [TARGET...]
#
# Runs each cargo-fuzz target (fuzz/fuzz_targets) for SECONDS (default 60)
# from the committed seed corpus (fuzz/corpus, written by
# `cargo run --release --example fuzz_corpus -- fuzz/corpus`), and prints
# the executions and the corpus size of each. Needs the nightly toolchain
# and cargo-fuzz (installed here if missing). A crash stops with libFuzzer's
# report and the input in fuzz/artifacts/TARGET/: turn it into a
# regression test before fixing it.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here/fuzz"
SECONDS_EACH=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(volume_config content_file names engine_dir segment line_protocol jsonl)
command -v cargo-fuzz >/dev/null || cargo install --quiet cargo-fuzz
rustup toolchain list | grep -q nightly || { echo "needs the nightly toolchain (rustup toolchain install nightly)"; exit 2; }
cargo +nightly fuzz build --release "${targets[@]/#/}" >/dev/null 2>&1 || cargo +nightly fuzz build --release
for t in "${targets[@]}"; do
  work=$(mktemp -d)
  cp -r "corpus/$t/." "$work/" 2>/dev/null || true
  log=$(mktemp)
  cargo +nightly fuzz run --release "$t" "$work" -- -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 >"$log" 2>&1 || {
    tail -40 "$log"; echo "FAILED: $t (see fuzz/artifacts/$t)"; exit 1; }
  runs=$(grep -Eo 'Done [0-9]+ runs' "$log" | tail -1 | grep -Eo '[0-9]+' || echo "?")
  printf '%-14s %12s executions in %ss, corpus %s inputs\n' "$t" "$runs" "$SECONDS_EACH" "$(ls "$work" | wc -l)"
  rm -rf "$work" "$log"
done
