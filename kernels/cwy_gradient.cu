// The k x k coefficient of the level-3 CWY backward, per block:
//     C = Ru + Ru^T,  R = T^T N T^T,  Ru = striu(R),
// for stacks of upper-triangular T and arbitrary N. GPU twin of
// cuhouse._gpu.primitives.cwy_gradient_coefficients. Two launches, each a batched
// 16 x 16-tiled product that skips the tiles T's zero triangle makes zero:
//     1. M = N T^T      (M_aj = sum_{b >= j} N_ab T_jb)
//     2. C_ij = C_ji = sum_{a <= i} T_ai M_aj  for i < j, and C_ii = 0.
// Entries of T below its diagonal are taken as zero. Cost: about k^3 flops
// per block in all (a dense R would take 4 k^3).
#include "common.cuh"

#define CUHOUSE_TILE 16

// Decomposes a flat tile number into (matrix, tile row, tile column).
struct cuhouse_tile_position {
    cuhouse_index matrix;
    int row0;
    int col0;
};

__device__ __forceinline__ cuhouse_tile_position cuhouse_locate_tile(cuhouse_index flat, int tiles) {
    cuhouse_tile_position p;
    const cuhouse_index per_matrix = (cuhouse_index)tiles * tiles;
    p.matrix = flat / per_matrix;
    const int within = (int)(flat - p.matrix * per_matrix);
    p.row0 = (within / tiles) * CUHOUSE_TILE;
    p.col0 = (within % tiles) * CUHOUSE_TILE;
    return p;
}

// Stage 1, M = N T^T. blockDim = (16, 16); grid-stride over count * tiles^2
// output tiles. `tile` is uniform across the block, so all threads reach
// every __syncthreads.
template <typename T>
__global__ void cuhouse_cwy_gradient_right(const T* __restrict__ t, const T* __restrict__ n,
                                           cuhouse_index count, int k, T* __restrict__ m) {
    __shared__ T n_tile[CUHOUSE_TILE][CUHOUSE_TILE + 1];
    __shared__ T t_tile[CUHOUSE_TILE][CUHOUSE_TILE + 1];
    const int tx = threadIdx.x;
    const int ty = threadIdx.y;
    const int tiles = (k + CUHOUSE_TILE - 1) / CUHOUSE_TILE;
    const cuhouse_index total = count * tiles * tiles;
    const cuhouse_index size = (cuhouse_index)k * k;
    for (cuhouse_index flat = blockIdx.x; flat < total; flat += gridDim.x) {
        const cuhouse_tile_position p = cuhouse_locate_tile(flat, tiles);
        const T* tm = t + p.matrix * size;
        const T* nm = n + p.matrix * size;
        const int a = p.row0 + ty;    // output row
        const int j = p.col0 + tx;    // output column
        T acc = 0;
        for (int b0 = p.col0; b0 < k; b0 += CUHOUSE_TILE) {   // T_jb = 0 for b < j
            const int b = b0 + tx;
            const int jt = p.col0 + ty;
            n_tile[ty][tx] = (a < k && b < k) ? nm[(cuhouse_index)a * k + b] : T(0);
            t_tile[ty][tx] = (jt < k && b < k && b >= jt) ? tm[(cuhouse_index)jt * k + b] : T(0);
            __syncthreads();
            for (int q = 0; q < CUHOUSE_TILE; ++q) {
                acc += n_tile[ty][q] * t_tile[tx][q];
            }
            __syncthreads();  // the tiles are overwritten next round
        }
        if (a < k && j < k) {
            m[p.matrix * size + (cuhouse_index)a * k + j] = acc;
        }
    }
}

// Stage 2, C from M. Only tiles on or above the diagonal compute; each
// strictly upper entry is written to (i, j) and mirrored to (j, i), and the
// diagonal is set to 0, so every entry of C is written by exactly one thread.
template <typename T>
__global__ void cuhouse_cwy_gradient_left(const T* __restrict__ t, const T* __restrict__ m,
                                          cuhouse_index count, int k, T* __restrict__ c) {
    __shared__ T t_tile[CUHOUSE_TILE][CUHOUSE_TILE + 1];
    __shared__ T m_tile[CUHOUSE_TILE][CUHOUSE_TILE + 1];
    const int tx = threadIdx.x;
    const int ty = threadIdx.y;
    const int tiles = (k + CUHOUSE_TILE - 1) / CUHOUSE_TILE;
    const cuhouse_index total = count * tiles * tiles;
    const cuhouse_index size = (cuhouse_index)k * k;
    for (cuhouse_index flat = blockIdx.x; flat < total; flat += gridDim.x) {
        const cuhouse_tile_position p = cuhouse_locate_tile(flat, tiles);
        if (p.row0 > p.col0) {
            continue;  // block-uniform: mirrored from the tile above the diagonal
        }
        const T* tm = t + p.matrix * size;
        const T* mm = m + p.matrix * size;
        const int i = p.row0 + ty;
        const int j = p.col0 + tx;
        T acc = 0;
        for (int a0 = 0; a0 < p.row0 + CUHOUSE_TILE && a0 < k; a0 += CUHOUSE_TILE) {   // T_ai = 0 for a > i
            const int a = a0 + ty;
            const int it = p.row0 + tx;
            t_tile[ty][tx] = (a < k && it < k && a <= it) ? tm[(cuhouse_index)a * k + it] : T(0);
            m_tile[ty][tx] = (a < k && j < k) ? mm[(cuhouse_index)a * k + j] : T(0);
            __syncthreads();
            for (int q = 0; q < CUHOUSE_TILE; ++q) {
                acc += t_tile[q][ty] * m_tile[q][tx];
            }
            __syncthreads();
        }
        T* cm = c + p.matrix * size;
        if (i < j && j < k) {
            cm[(cuhouse_index)i * k + j] = acc;
            cm[(cuhouse_index)j * k + i] = acc;
        } else if (i == j && i < k) {
            cm[(cuhouse_index)i * k + i] = T(0);
        }
    }
}

#ifdef CUHOUSE_INSTANTIATE
template __global__ void cuhouse_cwy_gradient_right<float>(const float*, const float*, cuhouse_index, int, float*);
template __global__ void cuhouse_cwy_gradient_right<double>(const double*, const double*, cuhouse_index, int,
                                                            double*);
template __global__ void cuhouse_cwy_gradient_left<float>(const float*, const float*, cuhouse_index, int, float*);
template __global__ void cuhouse_cwy_gradient_left<double>(const double*, const double*, cuhouse_index, int,
                                                           double*);
#endif
