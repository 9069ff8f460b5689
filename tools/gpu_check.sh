#!/usr/bin/env bash
# Device validation in one prepared command: the first thing to run whenever a
# GPU is lent. From the project's root (or anywhere: it works in the root):
#
#   bash tools/gpu_check.sh --stamp              # before sending the tree: writes .gpu_check_commit
#   bash tools/gpu_check.sh [OUTDIR]             # on the device; OUTDIR defaults to $OUT, else a new temp folder
#   bash tools/gpu_check.sh --dry-run [OUTDIR]   # the same script on the CPU stand-in of CuPy (contract; CI runs it)
#
# Steps, each under its own time limit inside a total budget (GPU_CHECK_BUDGET,
# default 570 s, so that the whole check fits one 10-minute device call; 1800 s
# for a dry run):
#   compile    tools/compile_kernels.sh (nvcc, sm_80 and sm_90)
#   pytest     python -m pytest -m "gpu or cuda_torch" tests/ (a skipped test fails the step)
#   memcheck   compute-sanitizer --tool memcheck on tools/sanitizer_driver.py
#   racecheck  compute-sanitizer --tool racecheck on tools/sanitizer_driver.py
#   bench      python -m cuhouse bench --backend cupy --sizes 4096 --m 32 --sections forward --rounds 3
# Then it writes, to OUTDIR: every step's log, entry.md (the record, in the
# format kernels/VALIDATION.md describes) and VALIDATION.md (the tree's file
# with the entry appended: copy it over kernels/VALIDATION.md to land it). It
# exits non-zero if any step failed.
#
# Nothing outside the tree is needed and nothing is installed: cuhouse is
# imported from the tree (PYTHONPATH, no pip install), the kernel hash comes
# from tools/kernel_hash.py, python3/nvcc/compute-sanitizer are looked for on
# PATH and in the usual CUDA folders (PYTHON, NVCC, COMPUTE_SANITIZER override).
# Without .git the commit is read from .gpu_check_commit (written by --stamp).
#
# --dry-run runs the same steps on the CPU: pytest -m gpu under the CuPy
# stand-in (tools/sanitizer_driver.py --on-cpu plain), the sanitizer driver's
# plain mode (the CPU model's own bounds and barrier checks) in place of
# memcheck and racecheck (tools/kernels_on_cpu.sh runs the sanitizer modes),
# the bench on the stand-in at d = 256, and nvcc only when it is installed. Its entry is headed "dry run" and never meant for landing.
# GPU_CHECK_TESTS (default tests/) names the test paths pytest gets.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
root="$(pwd)"

dry_run=0
case "${1:-}" in
--stamp)
    {
        git rev-parse HEAD
        git diff --quiet HEAD -- 2>/dev/null || echo "(with uncommitted changes)"
    } | paste -sd ' ' >.gpu_check_commit
    echo "gpu_check: wrote .gpu_check_commit: $(cat .gpu_check_commit)"
    exit 0
    ;;
--dry-run)
    dry_run=1
    shift
    ;;
-*)
    echo "gpu_check: unknown option $1 (options: --stamp, --dry-run)" >&2
    exit 2
    ;;
esac
outdir="${1:-${OUT:-}}"
[ -n "$outdir" ] || outdir="$(mktemp -d)"
mkdir -p "$outdir" || exit 2
outdir="$(cd "$outdir" && pwd)"
budget="${GPU_CHECK_BUDGET:-$([ $dry_run -eq 1 ] && echo 1800 || echo 570)}" # a dry run on a shared CPU is slower
started=$SECONDS
failed=()
times=()
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" # cuhouse from this tree, installed or not
export PYTHONUNBUFFERED=1

first_of() { # first_of CANDIDATE...: the first that exists and is executable (names looked up on PATH)
    local c
    for c in "$@"; do
        [ -n "$c" ] || continue
        if [ -x "$c" ] && [ -f "$c" ]; then
            echo "$c"
            return 0
        fi
        if command -v "$c" >/dev/null 2>&1; then
            command -v "$c"
            return 0
        fi
    done
    return 1
}

# --- tools
if [ $dry_run -eq 1 ]; then
    # the stand-in refuses to shadow a real CuPy: this needs a Python without one
    probe="import numpy, scipy, pytest, importlib.util, sys; sys.exit(importlib.util.find_spec('cupy') is not None)"
else
    probe="import numpy, scipy, pytest, cupy; assert not getattr(cupy, '__cuda_cpu__', False)"
fi
python=""
for candidate in "${PYTHON:-}" python3 /opt/torch/.venv/bin/python3 /usr/bin/python3 python; do
    found="$(first_of "$candidate")" || continue
    if "$found" -c "$probe" 2>/dev/null; then
        python="$found"
        break
    fi
done
if [ -z "$python" ]; then
    echo "gpu_check: no Python with numpy, scipy, pytest and $([ $dry_run -eq 1 ] && echo "no CuPy" || echo CuPy) found" \
        "(tried \$PYTHON, python3, /opt/torch/.venv/bin/python3, /usr/bin/python3, python)" >&2
    exit 2
fi
nvcc="$(first_of "${NVCC:-}" nvcc /usr/local/cuda/bin/nvcc $(ls -d /usr/local/cuda-*/bin/nvcc 2>/dev/null | sort -rV))" || nvcc=""
sanitizer="$(first_of "${COMPUTE_SANITIZER:-}" compute-sanitizer /usr/local/cuda/bin/compute-sanitizer \
    /usr/local/cuda/compute-sanitizer/compute-sanitizer \
    $(ls -d /usr/local/cuda-*/bin/compute-sanitizer /opt/nvidia/*/compute-sanitizer 2>/dev/null | sort -rV))" || sanitizer=""
echo "gpu_check: python $python ($("$python" -c 'import sys; print(sys.version.split()[0])')), nvcc ${nvcc:-none}," \
    "compute-sanitizer ${sanitizer:-none}, output $outdir$([ $dry_run -eq 1 ] && echo ', DRY RUN on the CPU stand-in')"

step() { # step NAME LIMIT COMMAND...: runs COMMAND under min(LIMIT, what is left), logs to $outdir/NAME.log
    local name="$1" limit="$2"
    shift 2
    local left=$((budget - (SECONDS - started)))
    [ "$limit" -le "$left" ] || limit=$left
    local log="$outdir/$name.log" begin=$SECONDS rc
    if [ "$limit" -le 5 ]; then
        echo "== $name: not run, the budget of $budget s is spent" | tee "$log"
        failed+=("$name (no time left)")
        times+=("$name -")
        return
    fi
    echo "== $name (limit ${limit} s): $*" | tee "$log"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
    rc=${PIPESTATUS[0]}
    times+=("$name $((SECONDS - begin)) s")
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        failed+=("$name (timed out after $limit s)")
    elif [ "$rc" -ne 0 ]; then
        failed+=("$name (exit $rc)")
    fi
}

# --- 1. compile
if [ -n "$nvcc" ]; then
    step compile 90 env NVCC="$nvcc" bash tools/compile_kernels.sh
elif [ $dry_run -eq 1 ]; then
    echo "== compile: no nvcc on this machine; a dry run goes on without it" | tee "$outdir/compile.log"
    times+=("compile -")
else
    echo "== compile: nvcc not found (PATH, /usr/local/cuda/bin, /usr/local/cuda-*/bin; NVCC=...)" | tee "$outdir/compile.log"
    failed+=("compile (no nvcc)")
fi

# --- 2. pytest: every GPU test, none skipped
read -r -a test_paths <<<"${GPU_CHECK_TESTS:-tests/}" # CI narrows a dry run's: kernels_on_cpu.sh ran them all
pytest_args=(-m pytest -q -p no:cacheprovider -rs "${test_paths[@]}")
if "$python" -c "import xdist" 2>/dev/null && [ $dry_run -eq 0 ]; then
    pytest_args+=(-n 4) # NVRTC compiles of CuPy's kernels on a fresh cache dominate: in parallel
fi
if [ $dry_run -eq 1 ]; then
    step pytest 900 "$python" tools/sanitizer_driver.py --on-cpu plain -- "$python" "${pytest_args[@]}" -m gpu
else
    step pytest 240 "$python" "${pytest_args[@]}" -m "gpu or cuda_torch"
fi
if grep -qE "[0-9]+ (skipped|xfailed)|no tests ran" "$outdir/pytest.log"; then
    failed+=("pytest (tests skipped: $(grep -oE '[0-9]+ skipped' "$outdir/pytest.log" | tail -n 1))")
fi

# --- 3, 4. memcheck and racecheck of every kernel
if [ $dry_run -eq 1 ]; then # the model's own bounds and barrier checks (the sanitizer modes: kernels_on_cpu.sh)
    step memcheck 150 "$python" tools/sanitizer_driver.py --on-cpu plain --sizes small
    step racecheck 150 "$python" tools/sanitizer_driver.py --on-cpu plain --sizes small
elif [ -n "$sanitizer" ]; then
    step memcheck 75 "$sanitizer" --tool memcheck --error-exitcode 1 "$python" tools/sanitizer_driver.py
    step racecheck 75 "$sanitizer" --tool racecheck --racecheck-report all --error-exitcode 1 \
        "$python" tools/sanitizer_driver.py
else
    for name in memcheck racecheck; do
        echo "== $name: compute-sanitizer not found (COMPUTE_SANITIZER=...)" | tee "$outdir/$name.log"
        failed+=("$name (no compute-sanitizer)")
    done
fi

# --- 5. bench
if [ $dry_run -eq 1 ]; then
    step bench 300 "$python" tools/sanitizer_driver.py --on-cpu plain -- \
        "$python" -m cuhouse bench --backend cupy --sizes 256 --m 32 --sections forward --rounds 1
else
    step bench 100 "$python" -m cuhouse bench --backend cupy --sizes 4096 --m 32 --sections forward --rounds 3
fi

# --- the record
if [ $dry_run -eq 1 ]; then
    where="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), dry run on the CPU stand-in of CuPy"
else
    where="$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1)"
fi
if git rev-parse HEAD >/dev/null 2>&1; then
    commit="$(git rev-parse HEAD)"
    git diff --quiet HEAD -- 2>/dev/null || commit="$commit (with uncommitted changes)"
elif [ -f .gpu_check_commit ]; then
    commit="$(cat .gpu_check_commit) (from .gpu_check_commit)"
else
    commit="unknown (no .git and no .gpu_check_commit: run bash tools/gpu_check.sh --stamp before sending the tree)"
fi
summary() { grep -hE "$2" "$outdir/$1.log" 2>/dev/null | tail -n 1 | sed 's/^=* *//'; }
entry="$outdir/entry.md"
{
    echo
    echo "## $(date -u +%Y-%m-%dT%H:%MZ) on ${where:-unknown GPU}$([ $dry_run -eq 1 ] && echo ' (not a device run)')"
    echo
    echo "- commit: $commit"
    echo "- result: $([ ${#failed[@]} -eq 0 ] && echo passed || echo "FAILED: ${failed[*]}")"
    echo "- pytest: $(summary pytest '(passed|failed|error|skipped|no tests ran)')"
    echo "- memcheck: $(summary memcheck '(ERROR SUMMARY|sanitizer_driver --on-cpu)')"
    echo "- racecheck: $(summary racecheck '(RACECHECK SUMMARY|sanitizer_driver --on-cpu)')"
    echo "- step times: $(printf '%s, ' "${times[@]}" | sed 's/, $//'); total $((SECONDS - started)) s"
    echo "- tools: python $python, nvcc ${nvcc:-none}, compute-sanitizer ${sanitizer:-none}"
    echo
    echo "kernel-sha256: $("$python" tools/kernel_hash.py)"
    echo
    echo '```text'
    grep -vE '^(== |$)' "$outdir/bench.log" 2>/dev/null
    echo '```'
} >"$entry"
cat kernels/VALIDATION.md "$entry" >"$outdir/VALIDATION.md"
cat "$entry"
echo "gpu_check: logs, entry.md and VALIDATION.md (kernels/VALIDATION.md with the entry appended) in $outdir"
if [ ${#failed[@]} -ne 0 ]; then
    echo "gpu_check: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "gpu_check: passed in $((SECONDS - started)) s"
