#!/usr/bin/env bash
# Compiles every kernels/*.cu with nvcc for sm_80 and sm_90, with the float and
# double templates explicitly instantiated (-DCUHOUSE_INSTANTIATE), warnings as
# errors. Exits non-zero on the first failure. Needs nvcc, not a GPU.
#
#   tools/compile_kernels.sh            # from the project's root
#   NVCC=/path/to/nvcc ARCHS="80 90" tools/compile_kernels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
nvcc_bin="${NVCC:-nvcc}"
archs="${ARCHS:-80 90}"
command -v "$nvcc_bin" >/dev/null || { echo "compile_kernels: $nvcc_bin not found" >&2; exit 2; }
shopt -s nullglob
sources=(kernels/*.cu)
if [ ${#sources[@]} -eq 0 ]; then
    echo "compile_kernels: no kernels/*.cu found" >&2
    exit 2
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
"$nvcc_bin" --version | tail -n 1
for src in "${sources[@]}"; do
    for arch in $archs; do
        log="$out/$(basename "$src" .cu).sm_${arch}.log"
        "$nvcc_bin" -std=c++17 -DCUHOUSE_INSTANTIATE -Ikernels --Werror all-warnings --resource-usage \
            -arch="sm_${arch}" -cubin -o "$out/$(basename "$src" .cu).sm_${arch}.cubin" "$src" >"$log" 2>&1 \
            || { cat "$log" >&2; echo "FAILED  $src  sm_${arch}" >&2; exit 1; }
        entries=$(grep -c "Compiling entry function" "$log" || true)
        if [ "$entries" -eq 0 ]; then
            echo "FAILED  $src  sm_${arch}: no kernel was instantiated (missing CUHOUSE_INSTANTIATE block?)" >&2
            exit 1
        fi
        echo "ok  $src  sm_${arch}  (${entries} kernels)"
    done
done
echo "compile_kernels: ${#sources[@]} source(s) compiled for sm_${archs// /, sm_}"
