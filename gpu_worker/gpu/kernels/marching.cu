// Marching cubes on the GPU: the same mesh as gpu_worker/marching.py, array for array.
//
// Grid: the volume (nk slices, nj rows, ni columns) padded by one "outside" voxel on every
// side, never materialised: inside(a, b, c) is false outside 1..nk, 1..nj, 1..ni, and
// otherwise vol[a-1, b-1, c-1] >= level. A padded row (a, b), a in [0, nk], b in [0, nj],
// owns the cut x/y/z edges starting at its voxels and starts the cubes (a..a+1, b..b+1, c..c+1)
// for c in [0, ni]. Vertices are numbered row by row (a, then b), then by column, then by
// axis x < y < z; triangles by cube row, column, then table order. That order is the CPU
// reference's, and it lets every row find its output offsets from two small prefix sums.
//
// Passes: mc_count (per row: owned cut edges, triangles) -> prefix sums (CuPy) -> mc_emit
// (per row: vertices, optionally mapped to LPS mm, and triangles). One thread block per row;
// blocks read the 2-3 slices they need, so a slab of slices can run alone (see
// gpu_worker/gpu/marching.py for the seam). Compile with --fmad=false: vertex arithmetic must
// round like the CPU's (IEEE double, then float32).

#include "mc_tables.cuh"

#define MC_BLOCK 128
#define T_EPS (1.0 / 256.0)

struct Volume {
    int nk, nj, ni;  // the whole volume
    int kbase;       // global index of the first slice held in memory (slabs)
};

template <typename T> __device__ __forceinline__ double level_as(double level);
template <> __device__ __forceinline__ double level_as<short>(double level) { return level; }
template <> __device__ __forceinline__ double level_as<float>(double level) {
    return (double)(float)level;  // float data compare in float32, as the CPU does
}

template <typename T>
__device__ __forceinline__ bool held(const Volume& v, int k, int j, int i) {
    return k >= 0 && k < v.nk && j >= 0 && j < v.nj && i >= 0 && i < v.ni;
}

template <typename T>
__device__ __forceinline__ T sample(const T* vol, const Volume& v, int k, int j, int i) {
    return vol[((long long)(k - v.kbase) * v.nj + j) * v.ni + i];
}

// The samples of padded row (a, b) (index them with column i = c - 1), or null when the whole
// row lies in the padding.
template <typename T>
__device__ __forceinline__ const T* row_of(const T* vol, const Volume& v, int a, int b) {
    const int k = a - 1, j = b - 1;
    if (k < 0 || k >= v.nk || j < 0 || j >= v.nj) return nullptr;
    return vol + ((long long)(k - v.kbase) * v.nj + j) * v.ni;
}

template <typename T>
__device__ __forceinline__ int inside_row(const T* row, const Volume& v, T level, int c) {
    const int i = c - 1;
    return (row != nullptr && i >= 0 && i < v.ni && row[i] >= level) ? 1 : 0;
}

template <typename T> __device__ __forceinline__ T typed_level(double level);
template <> __device__ __forceinline__ short typed_level<short>(double level) {
    // Integer data: the CPU compares value >= level in float64. With level = L - 0.5
    // (effective_level) that is value >= ceil(level); any level works the same way.
    return (short)max(-32768.0, min(32767.0, ceil(level)));
}
template <> __device__ __forceinline__ float typed_level<float>(double level) {
    return (float)level;
}

// Rows [row0, row0 + gridDim.x) of the (nk+1) x (nj+1) padded rows. Writes, per row, the
// number of cut edges it owns and the number of triangles of the cubes it starts.
template <typename T>
__global__ void __launch_bounds__(MC_BLOCK)
mc_count(const T* __restrict__ vol, int nk, int nj, int ni, int kbase, double level_d,
         int row0,
         int* __restrict__ vcnt, int* __restrict__ tcnt) {
    const Volume v = {nk, nj, ni, kbase};
    const int row = row0 + blockIdx.x;
    const int a = row / (v.nj + 1), b = row % (v.nj + 1);
    const T level = typed_level<T>(level_d);
    const T* rows[4];  // bit r of a column code: row (a + (r >> 1), b + (r & 1))
    for (int r = 0; r < 4; ++r) rows[r] = row_of(vol, v, a + (r >> 1), b + (r & 1));
    int nv = 0, nt = 0;
    for (int c = threadIdx.x; c <= v.ni; c += MC_BLOCK) {
        int key = 0;
#pragma unroll
        for (int r = 0; r < 4; ++r)
            key |= inside_row(rows[r], v, level, c) << (4 + r)
                   | inside_row(rows[r], v, level, c + 1) << r;
        nv += __popc(MC_COL_BITS[key]);
        nt += MC_COL_NTRI[key];
    }
    // Block sum of both counts (fields of one 64-bit value).
    unsigned long long x = (unsigned long long)nv | (unsigned long long)nt << 32;
    for (int d = 16; d > 0; d >>= 1) x += __shfl_down_sync(0xffffffffu, x, d);
    __shared__ unsigned long long warp_sum[MC_BLOCK / 32];
    if ((threadIdx.x & 31) == 0) warp_sum[threadIdx.x >> 5] = x;
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned long long s = 0;
        for (int w = 0; w < MC_BLOCK / 32; ++w) s += warp_sum[w];
        vcnt[row] = (int)(s & 0xffffffffu);
        tcnt[row] = (int)(s >> 32);
    }
}

// Exclusive block scan of packed 12-bit fields; returns the exclusive value, total in *total.
__device__ __forceinline__ unsigned long long block_scan(unsigned long long x,
                                                         unsigned long long* total) {
    __shared__ unsigned long long warp_tot[MC_BLOCK / 32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    unsigned long long incl = x;
    for (int d = 1; d < 32; d <<= 1) {
        unsigned long long y = __shfl_up_sync(0xffffffffu, incl, d);
        if (lane >= d) incl += y;
    }
    if (lane == 31) warp_tot[warp] = incl;
    __syncthreads();
    unsigned long long before = 0, all = 0;
    for (int w = 0; w < MC_BLOCK / 32; ++w) {
        if (w < warp) before += warp_tot[w];
        all += warp_tot[w];
    }
    __syncthreads();  // warp_tot is reused by the next call
    *total = all;
    return before + incl - x;
}

__device__ __forceinline__ int field(unsigned long long x, int f) {
    return (int)((x >> (12 * f)) & 0xfff);
}

// t along an edge, as gpu_worker.marching._edge_t (float64).
__device__ __forceinline__ double edge_t(double v0, double v1, double level, bool own_in,
                                         bool other_in) {
    if (!own_in) return 1.0 - T_EPS;
    if (!other_in) return T_EPS;
    double t = (level - v0) / (v1 - v0);
    return fmin(fmax(t, T_EPS), 1.0 - T_EPS);
}

__device__ __forceinline__ void write_vertex(float* out, float fi, float fj, float fk,
                                             const double* xf, const double* origins,
                                             int n_origins) {
    if (n_origins == 0) {  // voxel-index coordinates
        out[0] = fi; out[1] = fj; out[2] = fk;
        return;
    }
    const double i = fi, j = fj, k = fk;
    double o[3];
    if (n_origins == 1) {
        for (int d = 0; d < 3; ++d) o[d] = origins[d] + k * xf[6 + d];
    } else {
        long long k0 = (long long)floor(k);
        k0 = k0 < 0 ? 0 : (k0 > n_origins - 2 ? n_origins - 2 : k0);
        const double f = k - (double)k0;
        for (int d = 0; d < 3; ++d)
            o[d] = origins[3 * k0 + d] * (1.0 - f) + origins[3 * (k0 + 1) + d] * f;
    }
    for (int d = 0; d < 3; ++d) out[d] = (float)((o[d] + i * xf[d]) + j * xf[3 + d]);
}

// Rows [row0, row0 + gridDim.x): vertices owned by each row, then triangles of its cubes.
// voff/toff: exclusive offsets of every row of the whole grid (vertices, triangles); the
// totals fit 32 bits (the launcher checks).
// xf: 9 doubles (row step, column step, normal), origins: n_origins x 3 doubles; with
// n_origins == 0 vertices stay in voxel-index coordinates (i, j, k).
template <typename T>
__global__ void __launch_bounds__(MC_BLOCK)
mc_emit(const T* __restrict__ vol, int nk, int nj, int ni, int kbase, double level_d, int row0,
        const int* __restrict__ vcnt, const int* __restrict__ tcnt,
        const long long* __restrict__ voff, const long long* __restrict__ toff,
        const double* __restrict__ xf, const double* __restrict__ origins, int n_origins,
        int flip, float* __restrict__ verts, int* __restrict__ faces) {
    const Volume v = {nk, nj, ni, kbase};
    const int row = row0 + blockIdx.x;
    if (vcnt[row] == 0 && tcnt[row] == 0) return;
    const int a = row / (v.nj + 1), b = row % (v.nj + 1);
    const T level = typed_level<T>(level_d);
    const double lt = level_as<T>(level_d);

    // inside() of padded rows (a+da, b+db), da, db in 0..2, columns c0 .. c0+MC_BLOCK+1.
    __shared__ unsigned char s_in[9][MC_BLOCK + 2];
    // Owned cut edges of the four owner rows r = da*2 + db (da, db in 0..1), and the global
    // number of the first vertex at each column.
    __shared__ unsigned char s_bits[4][MC_BLOCK + 1];
    __shared__ int s_pre[4][MC_BLOCK + 1];

    int base[4];
    for (int r = 0; r < 4; ++r) {
        const int ra = a + (r >> 1), rb = b + (r & 1);
        base[r] = (ra <= v.nk && rb <= v.nj) ? (int)voff[ra * (v.nj + 1) + rb] : 0;
    }
    int tout = (int)toff[row];
    const int tid = threadIdx.x;
    const T* rows[9];
#pragma unroll
    for (int n = 0; n < 9; ++n) rows[n] = row_of(vol, v, a + n / 3, b + n % 3);

    for (int c0 = 0; c0 <= v.ni; c0 += MC_BLOCK) {
        for (int x = tid; x < MC_BLOCK + 2; x += MC_BLOCK)
#pragma unroll
            for (int n = 0; n < 9; ++n)
                s_in[n][x] = inside_row(rows[n], v, level, c0 + x);
        __syncthreads();
        for (int x = tid; x < MC_BLOCK + 1; x += MC_BLOCK)
            for (int r = 0; r < 4; ++r) {
                const int n = (r >> 1) * 3 + (r & 1);
                const int here = s_in[n][x];
                s_bits[r][x] = (here != s_in[n][x + 1]) | (here != s_in[n + 1][x]) << 1
                               | (here != s_in[n + 3][x]) << 2;
            }
        __syncthreads();

        const int c = c0 + tid;
        const bool valid = c <= v.ni;
        const int q0 = s_in[0][tid] | s_in[1][tid] << 1 | s_in[3][tid] << 2 | s_in[4][tid] << 3;
        const int q1 = s_in[0][tid + 1] | s_in[1][tid + 1] << 1 | s_in[3][tid + 1] << 2
                       | s_in[4][tid + 1] << 3;
        const int key = q0 << 4 | q1;
        const int nt = valid ? MC_COL_NTRI[key] : 0;
        unsigned long long packed = (unsigned long long)nt << 48;
        for (int r = 0; r < 4; ++r)
            packed |= (unsigned long long)(valid ? __popc(s_bits[r][tid]) : 0) << (12 * r);
        unsigned long long total;
        const unsigned long long excl = block_scan(packed, &total);
#pragma unroll
        for (int r = 0; r < 4; ++r) {  // global vertex number of each owner row's first cut edge
            s_pre[r][tid] = base[r] + field(excl, r);
            if (tid == 0) s_pre[r][MC_BLOCK] = base[r] + field(total, r);
        }
        __syncthreads();

        // Vertices of the edges owned by voxel (a, b, c).
        const int own_bits = valid ? s_bits[0][tid] : 0;
        if (own_bits) {
            int out = s_pre[0][tid];
            const int k = a - 1, j = b - 1, i = c - 1;
            const bool own = held<T>(v, k, j, i);
            const double v0 = own ? (double)sample(vol, v, k, j, i) : 0.0;
            if (own_bits & 1) {
                const bool ok = i + 1 < v.ni;
                const double v1 = (ok && own) ? (double)sample(vol, v, k, j, i + 1) : 0.0;
                const double t = edge_t(v0, v1, lt, own, ok);
                write_vertex(verts + 3LL * out++, (float)((double)i + t), (float)j, (float)k,
                             xf, origins, n_origins);
            }
            if (own_bits & 2) {
                const bool ok = j + 1 < v.nj;
                const double v1 = (ok && own) ? (double)sample(vol, v, k, j + 1, i) : 0.0;
                const double t = edge_t(v0, v1, lt, own, ok);
                write_vertex(verts + 3LL * out++, (float)i, (float)((double)j + t), (float)k,
                             xf, origins, n_origins);
            }
            if (own_bits & 4) {
                const bool ok = k + 1 < v.nk;
                const double v1 = (ok && own) ? (double)sample(vol, v, k + 1, j, i) : 0.0;
                const double t = edge_t(v0, v1, lt, own, ok);
                write_vertex(verts + 3LL * out++, (float)i, (float)j, (float)((double)k + t),
                             xf, origins, n_origins);
            }
        }
        // Triangles of cube (a, b, c); each corner is a cut edge of one of the four owner rows.
        if (nt) {
            const int cube = MC_COL_CASE[key];
            long long t_out = (long long)tout + field(excl, 4);
            for (int s = 0; s < nt; ++s) {
                int id[3];
                for (int m = 0; m < 3; ++m) {
                    const int e = MC_TRI[cube][3 * s + m];
                    const int r = MC_EDGE_ROW[e];
                    const int x = tid + MC_EDGE_DX[e];
                    const int bits = s_bits[r][x];
                    id[m] = s_pre[r][x] + __popc(bits & ((1 << MC_EDGE_AXIS[e]) - 1));
                }
                int* f = faces + 3 * (t_out + s);
                f[0] = flip ? id[2] : id[0];
                f[1] = id[1];
                f[2] = flip ? id[0] : id[2];
            }
        }
#pragma unroll
        for (int r = 0; r < 4; ++r) base[r] += field(total, r);
        tout += field(total, 4);
        __syncthreads();
    }
}

#ifndef __CUDACC_RTC__
// nvcc (CI's syntax and type check) instantiates every kernel; CuPy names them instead.
template __global__ void mc_count<short>(const short*, int, int, int, int, double, int, int*,
                                         int*);
template __global__ void mc_count<float>(const float*, int, int, int, int, double, int, int*,
                                         int*);
template __global__ void mc_emit<short>(const short*, int, int, int, int, double, int, const int*,
                                        const int*, const long long*, const long long*,
                                        const double*, const double*, int, int, float*, int*);
template __global__ void mc_emit<float>(const float*, int, int, int, int, double, int, const int*,
                                        const int*, const long long*, const long long*,
                                        const double*, const double*, int, int, float*, int*);
#endif
