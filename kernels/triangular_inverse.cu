// Batched inverse of upper-triangular k x k matrices, T = S^{-1}, k <= 64, for
// all blocks in one launch. GPU twin of cuhouse._gpu.primitives.upper_triangular_inverse,
// which joins these blocks by doubling (batched GEMMs) for larger k.
#include "common.cuh"

// Column j of T = S^{-1} by back substitution: t_jj = 1 / s_jj and, going up,
// t_ij = -(sum_{l=i+1..j} s_il t_lj) / s_ii; entries below the diagonal are 0.
// `s` is one row-major k x k matrix; `t` has leading dimension k. Reads and
// writes only column j of `t`, so threads that own different columns never
// race. All threads of a warp walk the same row i, so s[i][l] is a broadcast.
// Cost: O(k^2) per column.
template <typename T>
__device__ void cuhouse_invert_column(const T* __restrict__ s, T* t, int k, int j) {
    for (int i = k - 1; i > j; --i) {
        t[(cuhouse_index)i * k + j] = T(0);
    }
    t[(cuhouse_index)j * k + j] = T(1) / s[(cuhouse_index)j * k + j];
    for (int i = k - 2; i >= 0; --i) {
        if (i < j) {
            const T* s_row = s + (cuhouse_index)i * k;
            T acc = 0;
            for (int l = i + 1; l <= j; ++l) {
                acc += s_row[l] * t[(cuhouse_index)l * k + j];
            }
            t[(cuhouse_index)i * k + j] = -acc / s_row[i];
        }
    }
}

// k <= 64: blockDim = (columns >= k, matrices per block); each matrix's T is
// built in a k x k shared-memory tile (dynamic shared memory of
// blockDim.y * k * k elements), then copied out coalesced. Grid-stride over
// groups of blockDim.y matrices; `first` is block-uniform, so every thread
// reaches both __syncthreads of each round.
template <typename T>
__global__ void cuhouse_triangular_inverse_shared(const T* __restrict__ s, cuhouse_index count, int k,
                                                  T* __restrict__ t) {
    extern __shared__ __align__(16) unsigned char cuhouse_shared_bytes[];
    const cuhouse_index size = (cuhouse_index)k * k;
    T* tile = reinterpret_cast<T*>(cuhouse_shared_bytes) + threadIdx.y * size;
    const cuhouse_index group = blockDim.y;
    for (cuhouse_index first = (cuhouse_index)blockIdx.x * group; first < count; first += gridDim.x * group) {
        const cuhouse_index matrix = first + threadIdx.y;
        const bool active = matrix < count;
        if (active && (int)threadIdx.x < k) {
            cuhouse_invert_column(s + matrix * size, tile, k, (int)threadIdx.x);
        }
        __syncthreads();  // the copy below reads every column of the tile
        if (active) {
            T* out = t + matrix * size;
            for (cuhouse_index e = threadIdx.x; e < size; e += blockDim.x) {
                out[e] = tile[e];
            }
        }
        __syncthreads();  // the tile is rebuilt next round
    }
}

#ifdef CUHOUSE_INSTANTIATE
template __global__ void cuhouse_triangular_inverse_shared<float>(const float*, cuhouse_index, int, float*);
template __global__ void cuhouse_triangular_inverse_shared<double>(const double*, cuhouse_index, int, double*);
#endif
