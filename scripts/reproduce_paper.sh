#!/usr/bin/env bash
# Every figure of docs/reproduction.md: one sweep per scenario in scenarios/paper/, then its
# report. Resumable (finished runs are skipped). Usage: scripts/reproduce_paper.sh [NAME ...]
# with NAME a scenario file stem (default: all). About 100 minutes on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
TESTBED="${TESTBED:-.venv/bin/testbed}"
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  names=(slo-vs-devices-heterogeneous slo-vs-devices-homogeneous baselines-40 model-switching
         intermittent gears-loads gears-changing-load coe-communication early-exit idn
         idn-alpha bursty trace energy)
fi
for name in "${names[@]}"; do
  out="runs/paper/$name"
  if ! grep -q '^\[sweep' "scenarios/paper/$name.toml"; then  # one run, no sweep
    [ -f "$out/summary.json" ] || "$TESTBED" run "scenarios/paper/$name.toml" --out "$out"
    "$TESTBED" report "$out"
    continue
  fi
  echo "== $name -> $out"
  start=$(date +%s)
  "$TESTBED" sweep "scenarios/paper/$name.toml" --out "$out"
  echo "== $name: sweep took $(( $(date +%s) - start )) s"
  "$TESTBED" report "$out"
done
