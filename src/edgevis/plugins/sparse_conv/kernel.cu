// Triple-gated sparse convolution: CUDA kernels (see tsc_kernel.h and reference.py for the definition).
//
// Pipeline (all on one stream, no host synchronisation):
//   1. pixelStats: per input pixel r = mean_c |x - x0|, v = mean_c |x - mean3x3(x)|      (FP32)
//   2. blockDecide: per output block, max of r / v over its receptive field -> REUSE/INTERP/COMPUTE;
//      atomically sums the active cost (COMPUTE pixels + lattice points of INTERP blocks)
//   3. updateX0: x0' = x on input tiles owned by non-REUSE blocks, x0 elsewhere
//   4. conv: one CTA per (output block, Cout tile); inactive blocks exit at once. COMPUTE blocks run an
//      implicit GEMM over their b x b pixels (the input tile with its halo is read directly, im2col
//      is never materialised), INTERP blocks over their stride-2 lattice points. FP16 tensors use
//      tensor cores (WMMA 16x16x16, FP32 accumulate) on sm_70+; FP32 tensors use an FP32 FMA path with
//      a shared-memory halo tile. Above the break-even (Params::dense_above) every block is computed.
//   5. select: y = y0 (REUSE) | conv (COMPUTE) | bilinear fill from the lattice (INTERP); y0' = y.
#include "tsc_kernel.h"

#include <cuda_fp16.h>
#include <mma.h>

namespace edgevis {
namespace tsc {
namespace {

constexpr int kReuse = 0, kInterp = 1, kCompute = 2;

__device__ __forceinline__ float toF(float v) { return v; }
__device__ __forceinline__ float toF(__half v) { return __half2float(v); }
template <typename T> __device__ __forceinline__ T fromF(float v);
template <> __device__ __forceinline__ float fromF<float>(float v) { return v; }
template <> __device__ __forceinline__ __half fromF<__half>(float v) { return __float2half(v); }

struct Geom {  // derived sizes
    int ho, wo, nbh, nbw, lh, lw;
};

__host__ __device__ inline Geom geom(Params const& p) {
    Geom g;
    g.ho = outSize(p.h, p.k, p.stride, p.padding);
    g.wo = outSize(p.w, p.k, p.stride, p.padding);
    g.nbh = (g.ho + p.block - 1) / p.block;
    g.nbw = (g.wo + p.block - 1) / p.block;
    g.lh = (g.ho + 1) / 2;
    g.lw = (g.wo + 1) / 2;
    return g;
}

// Points a CTA evaluates: a gny x gnx grid at origin (gy0, gx0) of a conv with stride `step`.
struct Tile {
    int gy0, gx0, gny, gnx, step;
    float* dst;  // (N, Cout, dh, dw) FP32 buffer
    int dh, dw;
};

// Which work a CTA does for block (bi, bj); returns false when the block is skipped.
__device__ bool tileFor(Params const& p, Geom const& g, int d, bool dense, int bi, int bj, float* ybuf, float* ebuf,
                        Tile& t) {
    int r0 = bi * p.block, c0 = bj * p.block;
    int r1 = min(r0 + p.block, g.ho) - 1, c1 = min(c0 + p.block, g.wo) - 1;
    if (dense || d == kCompute) {
        t = Tile{r0, c0, r1 - r0 + 1, c1 - c0 + 1, p.stride, ybuf, g.ho, g.wo};
        return true;
    }
    if (d == kInterp) {  // lattice rows r0/2 .. min(r1/2 + r1%2, lh-1), columns alike
        int i0 = r0 / 2, i1 = min(r1 / 2 + r1 % 2, g.lh - 1);
        int j0 = c0 / 2, j1 = min(c1 / 2 + c1 % 2, g.lw - 1);
        t = Tile{i0, j0, i1 - i0 + 1, j1 - j0 + 1, 2 * p.stride, ebuf, g.lh, g.lw};
        return true;
    }
    return false;
}

__device__ __forceinline__ bool denseMode(Params const& p, Geom const& g, int const* counters) {
    return static_cast<float>(counters[0]) > p.dense_above * static_cast<float>(p.n) * g.ho * g.wo;
}

// ---- 1. per-pixel statistics ---------------------------------------------------------------------
template <typename T>
__global__ void pixelStats(Params p, T const* __restrict__ x, T const* __restrict__ x0, float* __restrict__ rmap,
                           float* __restrict__ vmap) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    int total = p.n * p.h * p.w;
    if (idx >= total) return;
    int wq = idx % p.w, hq = (idx / p.w) % p.h, n = idx / (p.w * p.h);
    int ya = max(hq - 1, 0), yb = min(hq + 1, p.h - 1), xa = max(wq - 1, 0), xb = min(wq + 1, p.w - 1);
    float inv = 1.0f / static_cast<float>((yb - ya + 1) * (xb - xa + 1));
    float r = 0.f, v = 0.f;
    size_t plane = static_cast<size_t>(p.h) * p.w;
    for (int c = 0; c < p.cin; ++c) {
        size_t base = (static_cast<size_t>(n) * p.cin + c) * plane;
        float xv = toF(x[base + hq * p.w + wq]);
        r += fabsf(xv - toF(x0[base + hq * p.w + wq]));
        float s = 0.f;
        for (int yy = ya; yy <= yb; ++yy)
            for (int xx = xa; xx <= xb; ++xx) s += toF(x[base + yy * p.w + xx]);
        v += fabsf(xv - s * inv);
    }
    rmap[idx] = r / p.cin;
    vmap[idx] = v / p.cin;
}

// ---- 2. per-block decision -------------------------------------------------------------------------
__global__ void blockDecide(Params p, float const* __restrict__ rmap, float const* __restrict__ vmap,
                            int32_t* __restrict__ decision, int* __restrict__ counters) {
    Geom g = geom(p);
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= p.n * g.nbh * g.nbw) return;
    int bj = idx % g.nbw, bi = (idx / g.nbw) % g.nbh, n = idx / (g.nbw * g.nbh);
    int r0 = bi * p.block, c0 = bj * p.block;
    int r1 = min(r0 + p.block, g.ho) - 1, c1 = min(c0 + p.block, g.wo) - 1;
    int ya = max(r0 * p.stride - p.padding, 0), yb = min(r1 * p.stride - p.padding + p.k - 1, p.h - 1);
    int xa = max(c0 * p.stride - p.padding, 0), xb = min(c1 * p.stride - p.padding + p.k - 1, p.w - 1);
    float rm = -INFINITY, vm = -INFINITY;
    for (int yy = ya; yy <= yb; ++yy)
        for (int xx = xa; xx <= xb; ++xx) {
            size_t q = (static_cast<size_t>(n) * p.h + yy) * p.w + xx;
            rm = fmaxf(rm, rmap[q]);
            vm = fmaxf(vm, vmap[q]);
        }
    // an x0 of -inf (invalid cache) gives rm = inf: never REUSE nor INTERPOLATE
    int d = p.force_dense ? kCompute : (rm < p.tau_t ? kReuse : ((vm < p.tau_s && rm < INFINITY) ? kInterp : kCompute));
    decision[idx] = d;
    int cost = 0;
    if (d == kCompute) {
        cost = (r1 - r0 + 1) * (c1 - c0 + 1);
    } else if (d == kInterp) {
        int i1 = min(r1 / 2 + r1 % 2, g.lh - 1), j1 = min(c1 / 2 + c1 % 2, g.lw - 1);
        cost = (i1 - r0 / 2 + 1) * (j1 - c0 / 2 + 1);
    }
    if (cost) atomicAdd(&counters[0], cost);
}

// ---- 3. cache x0 update on owned tiles -------------------------------------------------------------
template <typename T>
__global__ void updateX0(Params p, T const* __restrict__ x, T const* __restrict__ x0, int32_t const* __restrict__ decision,
                         T* __restrict__ x0New) {
    Geom g = geom(p);
    size_t total = static_cast<size_t>(p.n) * p.cin * p.h * p.w;
    size_t idx = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    int wq = idx % p.w, hq = (idx / p.w) % p.h;
    int n = static_cast<int>(idx / (static_cast<size_t>(p.cin) * p.h * p.w));
    int unit = p.block * p.stride;
    int bi = min(hq / unit, g.nbh - 1), bj = min(wq / unit, g.nbw - 1);
    int d = decision[(n * g.nbh + bi) * g.nbw + bj];
    x0New[idx] = d != kReuse ? x[idx] : x0[idx];
}

// ---- 4a. FP32 (and pre-sm_70 FP16) conv on a tile: shared-memory halo tile, FMA ---------------------
constexpr int kCoTile = 32, kCk = 4, kPatch = 35, kThreads = 256, kMaxPts = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads) convTileFma(Params p, T const* __restrict__ x, T const* __restrict__ wgt,
                                                        T const* __restrict__ bias, int32_t const* __restrict__ decision,
                                                        int const* __restrict__ counters, float* ybuf, float* ebuf) {
    __shared__ float patch[kCk][kPatch][kPatch];
    __shared__ float ws[kCoTile][kCk][9];
    Geom g = geom(p);
    int blk = blockIdx.x;
    int bj = blk % g.nbw, bi = (blk / g.nbw) % g.nbh, n = blk / (g.nbw * g.nbh);
    Tile t;
    if (!tileFor(p, g, decision[blk], denseMode(p, g, counters), bi, bj, ybuf, ebuf, t)) return;
    int co0 = blockIdx.y * kCoTile;
    int kk = p.k * p.k;
    int ph = (t.gny - 1) * t.step + p.k, pw = (t.gnx - 1) * t.step + p.k;
    int iy0 = t.gy0 * t.step - p.padding, ix0 = t.gx0 * t.step - p.padding;
    int m_pts = t.gny * t.gnx;
    int col = threadIdx.x % kCoTile, grp = threadIdx.x / kCoTile;  // 8 groups of points
    constexpr int kPer = kMaxPts / (kThreads / kCoTile);
    float acc[kPer];
#pragma unroll
    for (int j = 0; j < kPer; ++j) acc[j] = 0.f;
    size_t plane = static_cast<size_t>(p.h) * p.w;
    for (int c0 = 0; c0 < p.cin; c0 += kCk) {
        for (int e = threadIdx.x; e < kCk * ph * pw; e += kThreads) {
            int c = e / (ph * pw), py = (e / pw) % ph, px = e % pw;
            int iy = iy0 + py, ix = ix0 + px;
            float v = 0.f;
            if (c0 + c < p.cin && iy >= 0 && iy < p.h && ix >= 0 && ix < p.w)
                v = toF(x[(static_cast<size_t>(n) * p.cin + c0 + c) * plane + iy * p.w + ix]);
            patch[c][py][px] = v;
        }
        for (int e = threadIdx.x; e < kCoTile * kCk * kk; e += kThreads) {
            int co = e / (kCk * kk), c = (e / kk) % kCk, tap = e % kk;
            float v = 0.f;
            if (co0 + co < p.cout && c0 + c < p.cin) v = toF(wgt[((static_cast<size_t>(co0 + co) * p.cin) + c0 + c) * kk + tap]);
            ws[co][c][tap] = v;
        }
        __syncthreads();
#pragma unroll
        for (int j = 0; j < kPer; ++j) {
            int m = grp + j * (kThreads / kCoTile);
            if (m < m_pts) {
                int my = (m / t.gnx) * t.step, mx = (m % t.gnx) * t.step;
                float a = acc[j];
                for (int c = 0; c < kCk; ++c)
                    for (int ky = 0; ky < p.k; ++ky)
                        for (int kx = 0; kx < p.k; ++kx) a = fmaf(patch[c][my + ky][mx + kx], ws[col][c][ky * p.k + kx], a);
                acc[j] = a;
            }
        }
        __syncthreads();
    }
    int co = co0 + col;
    if (co >= p.cout) return;
    float b = toF(bias[co]);
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
        int m = grp + j * (kThreads / kCoTile);
        if (m < m_pts) {
            int oy = t.gy0 + m / t.gnx, ox = t.gx0 + m % t.gnx;
            t.dst[((static_cast<size_t>(n) * p.cout + co) * t.dh + oy) * t.dw + ox] = acc[j] + b;
        }
    }
}

// ---- 4b. FP16 conv on a tile with tensor cores (implicit GEMM, WMMA 16x16x16, FP32 accumulate) -------
// GEMM per CTA: [M points] x [K = k*k*Cin] x [32 output channels]; A is gathered straight from the
// input (halo included) per (tap, 16-channel slice), B from the weights.
constexpr int kWarps = 4, kWmmaCo = 32, kMaxFrag = (kMaxPts / 16) * (kWmmaCo / 16) / kWarps;

__global__ void __launch_bounds__(kWarps * 32) convTileWmma(Params p, __half const* __restrict__ x,
                                                            __half const* __restrict__ wgt, __half const* __restrict__ bias,
                                                            int32_t const* __restrict__ decision,
                                                            int const* __restrict__ counters, float* ybuf, float* ebuf) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
    using namespace nvcuda;
    __shared__ __align__(32) __half As[kMaxPts * 16];
    __shared__ __align__(32) __half Bs[16 * kWmmaCo];
    __shared__ __align__(32) float Cs[kMaxPts * kWmmaCo];
    Geom g = geom(p);
    int blk = blockIdx.x;
    int bj = blk % g.nbw, bi = (blk / g.nbw) % g.nbh, n = blk / (g.nbw * g.nbh);
    Tile t;
    if (!tileFor(p, g, decision[blk], denseMode(p, g, counters), bi, bj, ybuf, ebuf, t)) return;
    int co0 = blockIdx.y * kWmmaCo;
    int m_pts = t.gny * t.gnx, m_tiles = (m_pts + 15) / 16, n_frag = m_tiles * (kWmmaCo / 16);
    int warp = threadIdx.x / 32, kk = p.k * p.k;
    size_t plane = static_cast<size_t>(p.h) * p.w;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[kMaxFrag];
#pragma unroll
    for (int f = 0; f < kMaxFrag; ++f) wmma::fill_fragment(acc[f], 0.0f);
    for (int tap = 0; tap < kk; ++tap) {
        int ky = tap / p.k, kx = tap % p.k;
        for (int c0 = 0; c0 < p.cin; c0 += 16) {
            for (int e = threadIdx.x; e < m_tiles * 16 * 16; e += kWarps * 32) {
                int m = e / 16, c = e % 16;
                __half v = __float2half(0.f);
                if (m < m_pts && c0 + c < p.cin) {
                    int iy = (t.gy0 + m / t.gnx) * t.step - p.padding + ky;
                    int ix = (t.gx0 + m % t.gnx) * t.step - p.padding + kx;
                    if (iy >= 0 && iy < p.h && ix >= 0 && ix < p.w)
                        v = x[(static_cast<size_t>(n) * p.cin + c0 + c) * plane + iy * p.w + ix];
                }
                As[e] = v;
            }
            for (int e = threadIdx.x; e < 16 * kWmmaCo; e += kWarps * 32) {
                int c = e / kWmmaCo, co = e % kWmmaCo;
                __half v = __float2half(0.f);
                if (c0 + c < p.cin && co0 + co < p.cout) v = wgt[((static_cast<size_t>(co0 + co) * p.cin) + c0 + c) * kk + tap];
                Bs[e] = v;
            }
            __syncthreads();
#pragma unroll
            for (int f = 0; f < kMaxFrag; ++f) {
                int id = warp + f * kWarps;
                if (id < n_frag) {
                    int mt = id / (kWmmaCo / 16), nt = id % (kWmmaCo / 16);
                    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a;
                    wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> b;
                    wmma::load_matrix_sync(a, As + mt * 16 * 16, 16);
                    wmma::load_matrix_sync(b, Bs + nt * 16, kWmmaCo);
                    wmma::mma_sync(acc[f], a, b, acc[f]);
                }
            }
            __syncthreads();
        }
    }
#pragma unroll
    for (int f = 0; f < kMaxFrag; ++f) {
        int id = warp + f * kWarps;
        if (id < n_frag) {
            int mt = id / (kWmmaCo / 16), nt = id % (kWmmaCo / 16);
            wmma::store_matrix_sync(Cs + mt * 16 * kWmmaCo + nt * 16, acc[f], kWmmaCo, wmma::mem_row_major);
        }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < m_pts * kWmmaCo; e += kWarps * 32) {
        int m = e / kWmmaCo, col = e % kWmmaCo, co = co0 + col;
        if (co >= p.cout) continue;
        int oy = t.gy0 + m / t.gnx, ox = t.gx0 + m % t.gnx;
        t.dst[((static_cast<size_t>(n) * p.cout + co) * t.dh + oy) * t.dw + ox] = Cs[e] + __half2float(bias[co]);
    }
#endif
}

// ---- 5. select / bilinear fill ---------------------------------------------------------------------
template <typename T>
__global__ void selectOut(Params p, T const* __restrict__ y0, int32_t const* __restrict__ decision,
                          int const* __restrict__ counters, float const* __restrict__ ybuf,
                          float const* __restrict__ ebuf, T* __restrict__ y, T* __restrict__ y0New) {
    Geom g = geom(p);
    size_t total = static_cast<size_t>(p.n) * p.cout * g.ho * g.wo;
    size_t idx = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    int ox = idx % g.wo, oy = (idx / g.wo) % g.ho;
    size_t nc = idx / (static_cast<size_t>(g.ho) * g.wo);
    int n = static_cast<int>(nc / p.cout);
    int d = decision[(n * g.nbh + oy / p.block) * g.nbw + ox / p.block];
    T out;
    if (d == kReuse) {
        out = y0[idx];
    } else if (d == kCompute) {
        out = fromF<T>(ybuf[idx]);
    } else {
        int i0 = oy / 2, i1 = min(i0 + oy % 2, g.lh - 1), j0 = ox / 2, j1 = min(j0 + ox % 2, g.lw - 1);
        float e00, e10, e01, e11;
        if (denseMode(p, g, counters)) {  // lattice = even pixels of the dense result
            float const* b = ybuf + nc * g.ho * g.wo;
            e00 = b[(2 * i0) * g.wo + 2 * j0], e10 = b[(2 * i1) * g.wo + 2 * j0];
            e01 = b[(2 * i0) * g.wo + 2 * j1], e11 = b[(2 * i1) * g.wo + 2 * j1];
        } else {
            float const* b = ebuf + nc * g.lh * g.lw;
            e00 = b[i0 * g.lw + j0], e10 = b[i1 * g.lw + j0], e01 = b[i0 * g.lw + j1], e11 = b[i1 * g.lw + j1];
        }
        out = fromF<T>(0.5f * (0.5f * (e00 + e10) + 0.5f * (e01 + e11)));
    }
    y[idx] = out;
    y0New[idx] = out;
}

size_t align256(size_t b) { return (b + 255) / 256 * 256; }

struct Workspace {
    float *rmap, *vmap, *ybuf, *ebuf;
    int* counters;
};

Workspace carve(Params const& p, void* base) {
    Geom g = geom(p);
    char* ptr = static_cast<char*>(base);
    Workspace ws;
    size_t pix = static_cast<size_t>(p.n) * p.h * p.w * sizeof(float);
    ws.rmap = reinterpret_cast<float*>(ptr); ptr += align256(pix);
    ws.vmap = reinterpret_cast<float*>(ptr); ptr += align256(pix);
    ws.counters = reinterpret_cast<int*>(ptr); ptr += 256;
    ws.ybuf = reinterpret_cast<float*>(ptr); ptr += align256(static_cast<size_t>(p.n) * p.cout * g.ho * g.wo * sizeof(float));
    ws.ebuf = reinterpret_cast<float*>(ptr);
    return ws;
}

template <typename T>
cudaError_t run(Params const& p, void const* x, void const* x0, void const* y0, void const* weight, void const* bias,
                void* y, void* x0New, void* y0New, int32_t* decision, void* workspace, cudaStream_t stream) {
    Geom g = geom(p);
    Workspace ws = carve(p, workspace);
    auto X = static_cast<T const*>(x), X0 = static_cast<T const*>(x0), Y0 = static_cast<T const*>(y0);
    auto W = static_cast<T const*>(weight), B = static_cast<T const*>(bias);
    cudaError_t err = cudaMemsetAsync(ws.counters, 0, 256, stream);
    if (err != cudaSuccess) return err;
    int pix = p.n * p.h * p.w;
    pixelStats<T><<<(pix + 255) / 256, 256, 0, stream>>>(p, X, X0, ws.rmap, ws.vmap);
    int nblk = p.n * g.nbh * g.nbw;
    blockDecide<<<(nblk + 127) / 128, 128, 0, stream>>>(p, ws.rmap, ws.vmap, decision, ws.counters);
    size_t xin = static_cast<size_t>(pix) * p.cin;
    updateX0<T><<<static_cast<unsigned>((xin + 255) / 256), 256, 0, stream>>>(p, X, X0, decision, static_cast<T*>(x0New));
    bool wmma = false;
    if (p.dtype == DType::kFloat16) {
        int dev = 0, major = 0;
        cudaGetDevice(&dev);
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
        wmma = major >= 7;
    }
    if (wmma) {
        dim3 grid(nblk, (p.cout + kWmmaCo - 1) / kWmmaCo);
        convTileWmma<<<grid, kWarps * 32, 0, stream>>>(p, reinterpret_cast<__half const*>(x),
                                                         reinterpret_cast<__half const*>(weight),
                                                         reinterpret_cast<__half const*>(bias), decision, ws.counters,
                                                         ws.ybuf, ws.ebuf);
    } else {
        dim3 grid(nblk, (p.cout + kCoTile - 1) / kCoTile);
        convTileFma<T><<<grid, kThreads, 0, stream>>>(p, X, W, B, decision, ws.counters, ws.ybuf, ws.ebuf);
    }
    size_t yout = static_cast<size_t>(p.n) * p.cout * g.ho * g.wo;
    selectOut<T><<<static_cast<unsigned>((yout + 255) / 256), 256, 0, stream>>>(
        p, Y0, decision, ws.counters, ws.ybuf, ws.ebuf, static_cast<T*>(y), static_cast<T*>(y0New));
    return cudaGetLastError();
}

}  // namespace

int32_t validate(Params const& p) {
    if (p.k != 1 && p.k != 3) return -1;
    if (p.stride != 1 && p.stride != 2) return -2;
    if (p.padding < 0 || p.padding > p.k / 2) return -3;
    if (p.block != 1 && p.block != 4 && p.block != 8 && p.block != 16) return -4;
    if (!(p.tau_t >= 0.f) || !(p.tau_s >= 0.f)) return -5;
    if (p.n < 1 || p.cin < 1 || p.cout < 1 || p.h < p.k || p.w < p.k) return -6;
    return 0;
}

size_t workspaceSize(Params const& p) {
    Geom g = geom(p);
    size_t pix = static_cast<size_t>(p.n) * p.h * p.w * sizeof(float);
    return 2 * align256(pix) + 256 + align256(static_cast<size_t>(p.n) * p.cout * g.ho * g.wo * sizeof(float)) +
           align256(static_cast<size_t>(p.n) * p.cout * g.lh * g.lw * sizeof(float));
}

cudaError_t enqueue(Params const& p, void const* x, void const* x0, void const* y0, void const* weight,
                    void const* bias, void* y, void* x0New, void* y0New, int32_t* decision, void* workspace,
                    cudaStream_t stream) {
    if (validate(p) != 0) return cudaErrorInvalidValue;
    if (p.dtype == DType::kFloat16)
        return run<__half>(p, x, x0, y0, weight, bias, y, x0New, y0New, decision, workspace, stream);
    return run<float>(p, x, x0, y0, weight, bias, y, x0New, y0New, decision, workspace, stream);
}

}  // namespace tsc
}  // namespace edgevis
