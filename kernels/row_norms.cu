// Row norms of a stack of vectors, optionally fused with the normalization.
// GPU twins of cuhouse._gpu.primitives.row_norms / normalize_rows / unit_rows.
#include "common.cuh"

// One warp per row of `v` (rows x d, C-contiguous): norms[r] = ||v[r]||.
// The sum of squares is used as is when it lies in [safe_low, safe_high]
// (tiny/eps and max*eps of T, passed from Python exactly as the NumPy twin
// uses them); otherwise the row is summed again scaled by its largest |entry|,
// which avoids spurious under/overflow. A zero row has norm 0.
// When `unit` is not null, unit[r] = v[r] / norms[r] (zero rows stay zero).
// Cost: one read of v (two for rows out of the safe range), one write of unit.
template <typename T>
__global__ void cuhouse_row_norms(const T* __restrict__ v, cuhouse_index rows, cuhouse_index d,
                                  T safe_low, T safe_high,
                                  T* __restrict__ norms, T* __restrict__ unit) {
    const int lane = threadIdx.x % CUHOUSE_WARP;
    const cuhouse_index warps_per_block = blockDim.x / CUHOUSE_WARP;
    const cuhouse_index row_step = (cuhouse_index)gridDim.x * warps_per_block;
    // `row` is the same for all lanes of a warp, so every shuffle below has a full warp.
    for (cuhouse_index row = (cuhouse_index)blockIdx.x * warps_per_block + threadIdx.x / CUHOUSE_WARP;
         row < rows; row += row_step) {
        const T* x = v + row * d;
        T sumsq = 0;
        T largest = 0;
        for (cuhouse_index i = lane; i < d; i += CUHOUSE_WARP) {
            const T a = x[i];
            sumsq += a * a;
            largest = max(largest, fabs(a));
        }
        sumsq = cuhouse_warp_sum(sumsq);
        largest = cuhouse_warp_max(largest);
        T norm;
        if (sumsq >= safe_low && sumsq <= safe_high) {
            norm = sqrt(sumsq);
        } else {  // under/overflow risk, a zero row, or NaN/Inf (which stay non-finite)
            const T scale = largest == T(0) ? T(1) : largest;
            T scaled = 0;
            for (cuhouse_index i = lane; i < d; i += CUHOUSE_WARP) {
                const T a = x[i] / scale;
                scaled += a * a;
            }
            norm = sqrt(cuhouse_warp_sum(scaled)) * scale;
        }
        if (lane == 0) {
            norms[row] = norm;
        }
        if (unit != nullptr) {
            const T divisor = norm == T(0) ? T(1) : norm;
            T* out = unit + row * d;
            for (cuhouse_index i = lane; i < d; i += CUHOUSE_WARP) {
                out[i] = x[i] / divisor;
            }
        }
    }
}

// unit[r, i] = v[r, i] / norms[r] for `v` (rows x d) with given norms; a zero
// norm divides by 1, so zero rows stay zero. Element-wise, grid-stride.
template <typename T>
__global__ void cuhouse_normalize_rows(const T* __restrict__ v, const T* __restrict__ norms,
                                       cuhouse_index rows, cuhouse_index d, T* __restrict__ unit) {
    const cuhouse_index total = rows * d;
    const cuhouse_index step = (cuhouse_index)gridDim.x * blockDim.x;
    for (cuhouse_index e = (cuhouse_index)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += step) {
        const T norm = norms[e / d];
        unit[e] = v[e] / (norm == T(0) ? T(1) : norm);
    }
}

#ifdef CUHOUSE_INSTANTIATE
template __global__ void cuhouse_row_norms<float>(const float*, cuhouse_index, cuhouse_index, float, float,
                                                  float*, float*);
template __global__ void cuhouse_row_norms<double>(const double*, cuhouse_index, cuhouse_index, double, double,
                                                   double*, double*);
template __global__ void cuhouse_normalize_rows<float>(const float*, const float*, cuhouse_index, cuhouse_index,
                                                       float*);
template __global__ void cuhouse_normalize_rows<double>(const double*, const double*, cuhouse_index,
                                                        cuhouse_index, double*);
#endif
