#!/usr/bin/env bash
# Device validation in one command, on a machine with an NVIDIA GPU, CuPy and
# compute-sanitizer (run from anywhere; it works in the project's root):
#   1. tools/compile_kernels.sh (sm_80, sm_90);
#   2. python -m pytest -m gpu;
#   3. compute-sanitizer --tool memcheck and --tool racecheck on tools/sanitizer_driver.py;
#   4. python -m cuhouse bench --backend cupy --sizes 4096 --m 32;
# then appends an entry to kernels/VALIDATION.md (format described there),
# whatever the outcome, and exits non-zero if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT
failed=()

step() {  # step NAME COMMAND...: runs COMMAND, tees its output to $logs/NAME.log
    local name="$1"
    shift
    echo "== $name: $*"
    "$@" 2>&1 | tee "$logs/$name.log"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || failed+=("$name (exit $rc)")
}

if [ -x ../shared/tools/kernel-hash ]; then
    hash_tool=../shared/tools/kernel-hash
elif [ -x shared/tools/kernel-hash ]; then
    hash_tool=shared/tools/kernel-hash
else
    echo "gpu_check: kernel-hash not found in ../shared/tools or shared/tools" >&2
    exit 2
fi
sanitizer="${COMPUTE_SANITIZER:-compute-sanitizer}"
command -v "$sanitizer" >/dev/null || sanitizer=/usr/local/cuda/bin/compute-sanitizer

step compile tools/compile_kernels.sh
step pytest python -m pytest -m gpu -q -p no:cacheprovider
step memcheck "$sanitizer" --tool memcheck --error-exitcode 1 python tools/sanitizer_driver.py
step racecheck "$sanitizer" --tool racecheck --racecheck-report all --error-exitcode 1 python tools/sanitizer_driver.py
step bench python -m cuhouse bench --backend cupy --sizes 4096 --m 32

gpu_name="$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1)"
commit="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
git diff --quiet HEAD -- 2>/dev/null || commit="$commit (with uncommitted changes)"
summary() { grep -E "$2" "$logs/$1.log" 2>/dev/null | tail -n "${3:-1}" | sed 's/^=* *//'; }
{
    echo
    echo "## $(date -u +%Y-%m-%dT%H:%MZ) on ${gpu_name:-unknown GPU}"
    echo
    echo "- commit: $commit"
    echo "- result: $([ ${#failed[@]} -eq 0 ] && echo passed || echo "FAILED: ${failed[*]}")"
    echo "- pytest -m gpu: $(summary pytest '(passed|failed|error|skipped|no tests ran)')"
    echo "- memcheck: $(summary memcheck 'ERROR SUMMARY')"
    echo "- racecheck: $(summary racecheck 'RACECHECK SUMMARY')"
    echo
    echo "kernel-sha256: $("$hash_tool")"
    echo
    echo '```text'
    grep -vE '^(== |$)' "$logs/bench.log"
    echo '```'
} >> kernels/VALIDATION.md
echo "gpu_check: entry appended to kernels/VALIDATION.md"
if [ ${#failed[@]} -ne 0 ]; then
    echo "gpu_check: FAILED: ${failed[*]}" >&2
    exit 1
fi
