#!/usr/bin/env bash
# CI smoke check of the ASV suite: `asv check`, then one quick pass of every
# benchmark on the NumPy backend at small sizes (CUHOUSE_ASV_SMOKE=1, see
# asv_benchmarks/benchmarks/common.py). Nothing is saved.
#
# Depending on its version, asv may exit 0 when benchmarks error, so this
# script fails (exit 1) when asv exits non-zero or its output reports any
# benchmark as failed. Skips (n/a) are fine.
# Run from anywhere; benchmarks the checkout this script lives in.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
log="$scratch/asv.log"
# The shrunken grid must not overwrite the committed results/benchmarks.json:
# run from a copy of the configuration whose results and html live in $scratch.
sed -e "s|\"repo\": \"..\"|\"repo\": \"$root\"|" \
    -e "s|\"benchmark_dir\": \"benchmarks\"|\"benchmark_dir\": \"$root/asv_benchmarks/benchmarks\"|" \
    -e "s|\"results_dir\": \"results\"|\"results_dir\": \"$scratch/results\"|" \
    -e "s|\"html_dir\": \"html\"|\"html_dir\": \"$scratch/html\"|" \
    -e "s|\"env_dir\": \"env\"|\"env_dir\": \"$scratch/env\"|" \
    "$root/asv_benchmarks/asv.conf.json" > "$scratch/asv.conf.json"
cd "$root/asv_benchmarks"
export CUHOUSE_ASV_SMOKE=1 ASV_PYTHONPATH="$root"

asv machine --yes --machine asv-smoke --config "$scratch/asv.conf.json" >/dev/null
asv check --python=same --config "$scratch/asv.conf.json"
status=0
asv run --python=same --machine asv-smoke --quick --dry-run --show-stderr --config "$scratch/asv.conf.json" \
    --set-commit-hash "$(git rev-parse HEAD)" 2>&1 | tee "$log" || status=$?

if [ "$status" -ne 0 ] || grep -Eq '\bfailed\b' "$log"; then
    echo "asv_smoke: FAILED (asv exit status $status); benchmarks that errored:" >&2
    grep -E '^\[.*\] ·+ [^ ]+ +failed$' "$log" >&2 || true
    exit 1
fi
echo "asv_smoke: every benchmark ran or was skipped"
