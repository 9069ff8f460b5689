#!/usr/bin/env bash
# Runs every CUDA kernel in kernels/, exactly as written, on the CPU, through
# the project's own launch code (cuhouse/_gpu/raw_kernels.py) and the CPU
# stand-in of CuPy (tests/cuda_cpu), and fails on any finding:
#   1. every GPU-marked test of tests/ (`pytest -m gpu`: every kernel, float and
#      double, awkward sizes, against its NumPy twin, and the whole library on
#      the CuPy backend), none skipped and none failing;
#   2. tools/sanitizer_driver.py under each mode: plain (the model's own
#      checks), ASan+UBSan, TSan (blocks on 4 threads at once), valgrind memcheck;
#   3. the seeded-bug check (tests/cuda_cpu/seeded_bugs.py): every mutant must
#      be caught by at least one mode; prints the mutant x mode table.
# Contract: run from the project root (CI and outside checks do); exit 0 when
# nothing was found. On a fresh Debian machine it installs what it needs:
# g++, clang-19 with its sanitizer runtimes, valgrind (apt-get; root or sudo),
# and, when the Python at hand lacks them or has a real CuPy (which the
# stand-in never shadows), a private virtual environment with the project.
#
#   tools/kernels_on_cpu.sh                 # PYTHON=... to choose the interpreter
#   tools/kernels_on_cpu.sh --record        # and insert the entry in kernels/VALIDATION.md
set -euo pipefail
record=0
[ "${1:-}" = "--record" ] && record=1
cd "$(dirname "$0")/.."
started=$SECONDS

missing=()
command -v g++ >/dev/null || missing+=(g++)
command -v clang++-19 >/dev/null || missing+=(clang-19)
tsan_runtime=$(clang++-19 -print-file-name=libclang_rt.tsan-x86_64.so 2>/dev/null || true)
[ -f "$tsan_runtime" ] || missing+=(libclang-rt-19-dev)
command -v valgrind >/dev/null || missing+=(valgrind)
if [ ${#missing[@]} -gt 0 ]; then
    echo "+ apt-get install ${missing[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
python="${PYTHON:-python3}"
if ! "$python" -c "import cuhouse, numpy, pytest" 2>/dev/null || "$python" -c "import cupy" 2>/dev/null; then
    venv="$scratch/venv"
    echo "+ a private virtual environment without CuPy: $venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -e ".[test]"
    python="$venv/bin/python"
fi
export CUDA_CPU_CACHE="${CUDA_CPU_CACHE:-$scratch/cache}"
driver=(tools/sanitizer_driver.py)
logs="$scratch/logs"
mkdir -p "$logs"
log="$logs/pytest.log"

step_started=$SECONDS
echo "+ every GPU test of tests/ on the CPU stand-in"
"$python" "${driver[@]}" --on-cpu plain -- "$python" -m pytest -q -p no:cacheprovider -m gpu tests/ \
    | tee "$log"
if grep -qE "skipped|failed|error|no tests ran" "$log" || ! grep -qE "^[0-9]+ passed" "$log"; then
    echo "kernels_on_cpu: the GPU tests did not all run and pass on the stand-in" >&2
    exit 1
fi
echo "kernels_on_cpu: GPU tests $(grep -oE '^[0-9]+ passed' "$log") in $((SECONDS - step_started)) s"

for mode in plain asan tsan valgrind; do
    echo "+ sanitizer driver, mode $mode"
    "$python" "${driver[@]}" --on-cpu "$mode" | tee "$logs/$mode.log"
done

echo "+ seeded bugs"
"$python" tests/cuda_cpu/seeded_bugs.py | tee "$logs/seeded.log"

if [ "$record" -eq 1 ]; then
    commit="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
    git diff --quiet HEAD -- 2>/dev/null || commit="$commit (with uncommitted changes)"
    cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
    modes=$(for mode in plain asan tsan valgrind; do
        grep -h "^sanitizer_driver --on-cpu" "$logs/$mode.log" | sed 's/^sanitizer_driver --on-cpu //'
    done | paste -sd ';' | sed 's/;/; /g')
    entry="$logs/entry.md"
    {
        echo "### $(date -u +%Y-%m-%dT%H:%MZ) on the CPU (${cpu:-unknown CPU}, $(nproc) cores)"
        echo
        echo "- commit: $commit"
        echo "- result: passed"
        echo "- GPU tests of tests/ on the stand-in: $(grep -oE '^[0-9]+ passed' "$log")"
        echo "- sanitizer driver: $modes"
        echo "- tools: $(g++ --version | head -n1), $(clang++-19 --version | head -n1), $(valgrind --version)"
        echo "- total: $((SECONDS - started)) s"
        echo
        echo "kernel-sha256: $("$python" tools/kernel_hash.py)"
        echo
        echo '```text'
        cat "$logs/seeded.log"
        echo '```'
        echo
    } > "$entry"
    marker='<!-- CPU entries: tools/kernels_on_cpu.sh --record inserts each above this line -->'
    if ! grep -qF "$marker" kernels/VALIDATION.md; then
        echo "kernels_on_cpu: no CPU marker in kernels/VALIDATION.md" >&2
        exit 1
    fi
    python3 - "$entry" "$marker" <<'PY'
import sys
entry, marker = open(sys.argv[1]).read(), sys.argv[2]
text = open("kernels/VALIDATION.md").read()
open("kernels/VALIDATION.md", "w").write(text.replace(marker, entry + marker, 1))
PY
    echo "kernels_on_cpu: entry inserted in kernels/VALIDATION.md"
fi

echo "kernels_on_cpu: every check passed in $((SECONDS - started)) s"
