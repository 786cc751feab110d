#!/usr/bin/env bash
# Runs every fuzz target briefly (default 30 s each), seeded with the real samples.
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# Usage: attestation/fuzz/run.sh [seconds-per-target]
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-30}"
data=../testdata
mkdir -p corpus/tdx_quote corpus/snp_report corpus/evidence_json corpus/gpu_report
cp "$data"/tdx_quote "$data"/tdx_quote_td15ex "$data"/tdx_quote_outdated corpus/tdx_quote/
python3 -c 'import sys; sys.stdout.buffer.write(b"\0" + bytes.fromhex(open(sys.argv[1]).read().strip()))' \
  "$data"/report_milan.hex > corpus/snp_report/report_milan
{ printf '\1'; cat "$data"/vcek_milan.der; } > corpus/snp_report/vcek_milan
python3 -c 'import sys; sys.stdout.buffer.write(b"\0" + bytes.fromhex(open(sys.argv[1]).read().strip()))' \
  "$data"/nvidia/hopperAttestationReport.txt > corpus/gpu_report/hopper_report
{ printf '\1'; cat "$data"/nvidia/hopperCertChain.txt; } > corpus/gpu_report/hopper_chain
printf '{"kind":"simulated","data":{"insecure_simulated":true}}' > corpus/evidence_json/simulated
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
# libFuzzer prints a line per new input: each target's output goes to its own log, and only a
# summary (or, on a crash, the log's tail) reaches the terminal, so a CI log stays readable.
logs="${FUZZ_LOG_DIR:-$CARGO_TARGET_DIR/fuzz-logs}"
mkdir -p "$logs"
for t in tdx_quote snp_report evidence_json gpu_report; do
  if ! cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -max_len=16384 -rss_limit_mb=2048 \
      >"$logs/$t.log" 2>&1; then
    echo "fuzz target $t FAILED; last lines of $logs/$t.log:" >&2
    tail -n 60 "$logs/$t.log" >&2
    exit 1
  fi
  echo "fuzz target $t: $(grep -E '^#[0-9]+[[:space:]]+DONE' "$logs/$t.log" | tail -n 1)" >&2
done
