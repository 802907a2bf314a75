// PROFIT's fused passes for NVIDIA GPUs (issue 4), driven by adapters/profit-cuda.
//
// profit-core describes each per-tensor pass as data (`Kernel { pass, rule, grad_scale, proj }`,
// profit-core/src/backend.rs); the element math is profit-core/src/optim.rs (`*Rule::update`)
// and the loop is profit-core/src/host.rs (`fused_loop`). The kernels below mirror them operation
// for operation, so that, compiled without FMA contraction and with IEEE division and square
// root (see build-ptx.sh), every element rounds exactly as on the host.
//
// Multi-tensor launches. One launch covers many tensors: `desc` is a device table with one
// `Desc` per tensor (pointers, length, first block, scalar-set index and rule flags); the launch
// walks a flattened (tensor, block) index with a grid-stride loop and finds each block's tensor
// by binary search over `block_start`. Each apply block covers APPLY_CHUNK elements; each
// reduction block REDUCE_CHUNK elements.
//
// Every apply kernel is one pass over memory: each array is read at most once and each written
// array written once. Reductions accumulate in f64 in a fixed order (a fixed thread-to-element
// map, a fixed shared-memory tree, then per tensor a fixed-order reduction of the block
// partials), so results are bitwise reproducible whatever the grid size.
//
// Entry points (the Rust side checks the PTX holds every one of them):
//   profit_apply_<f32|f64|bf16|f16>_<pass>_<rule>
//       pass: plain, ref_first_anchor, ref_first, ref_acc, main_anchor, main_sub, ref_anchor,
//             main_realized (profit-core's `Variant`, in its order)
//       rule: sgd, sgdm, adam, amsgrad, rmsprop
//   profit_reduce_partials_<f32|f64|bf16|f16>, profit_reduce_final
//   profit_decide_<f32|f64> (by math type: bf16 and f16 use f32)
//
// Deciding on the device. A call that needs reductions (every main call; reference and warm-up
// calls when non-finite gradients are refused or gradients clipped) can run as partials, final,
// decide, apply, back to back, with no wait for the host in between: `profit_decide_*` turns
// the per-tensor reductions into every tensor's (grad_scale, proj, delta_scale) and a verdict,
// exactly as profit-core's `Decision::evaluate` does (same operations, same summation order),
// and the apply kernels read those instead of the scalar set's, or do nothing at all when the
// verdict refuses the call.
//
// Element types. Parameters, gradients and state are stored as S (float, double, or the 16-bit
// bf16_t / f16_t below); the math runs in Math<S>::M (S itself for float and double, float for
// the 16-bit types), and every stored value is rounded once, to nearest even, as profit-core's
// `Element::store` does. The scalar sets are in the math type.

typedef unsigned long long u64;
typedef unsigned int u32;

// Mirrored by `Desc` in adapters/profit-cuda/src/ops.rs: 11 little-endian u64 words.
struct Desc {
    u64 p, g, d, a, s0, s1, s2;  // device pointers (0 where the pass does not use the array)
    u64 n;                       // elements
    u64 block_start;             // first flattened block of this tensor in this launch
    u64 meta;                    // scalar-set index (low 32 bits) | rule flags << 32
    u64 tensor;                  // the tensor's index in the optimizer's list, plus one
};

#define APPLY_THREADS 256
#define APPLY_PER_THREAD 4
#define APPLY_CHUNK (APPLY_THREADS * APPLY_PER_THREAD)
#define REDUCE_THREADS 256
#define REDUCE_PER_THREAD 16
#define REDUCE_CHUNK (REDUCE_THREADS * REDUCE_PER_THREAD)

// Scalar set layout (SC_STRIDE elements of the tensor's element type):
//   [0] grad_scale, [1] proj, [10] delta_scale (main passes: g - proj * (delta * delta_scale)),
//   and the rule's constants:
//   sgd:          [2] lr, [3] weight_decay
//   sgdm:         [2] lr, [3] weight_decay, [4] momentum, [5] 1 - dampening
//   adam/amsgrad: [2] l2, [3] decay, [4] 1 - beta1, [5] beta2, [6] 1 - beta2,
//                 [7] sqrt(bias_correction2), [8] step_size, [9] eps
//   rmsprop:      [2] lr, [3] weight_decay, [4] alpha, [5] 1 - alpha, [6] lerp weight,
//                 [7] eps, [8] momentum
#define SC_STRIDE 12

#define F_NESTEROV 1u
#define F_FIRST 2u
#define F_CENTERED 4u
#define F_MOMENTUM 8u

// Realized delta (no delta buffer): REF_ANCHOR sets the anchor at the first reference step,
// later reference steps run PLAIN with the reference slots, and MAIN_REALIZED forms
// delta = p - a in the element type.
enum {
    PLAIN = 0,
    REF_FIRST_ANCHOR = 1,
    REF_FIRST = 2,
    REF_ACC = 3,
    MAIN_ANCHOR = 4,
    MAIN_SUB = 5,
    REF_ANCHOR = 6,
    MAIN_REALIZED = 7
};
enum { SGD = 0, SGDM = 1, ADAM = 2, AMSGRAD = 3, RMSPROP = 4 };

// 16-bit storage, as raw bits (no cuda_bf16.h / cuda_fp16.h: the conversions below are exact
// integer code, the same on the GPU and in the CPU emulator).
struct bf16_t {
    unsigned short bits;
};
struct f16_t {
    unsigned short bits;
};

template <typename S>
struct Math {
    typedef S M;
};
template <>
struct Math<bf16_t> {
    typedef float M;
};
template <>
struct Math<f16_t> {
    typedef float M;
};

__device__ __forceinline__ u32 f2u(float f) {
    union {
        float f;
        u32 u;
    } c;
    c.f = f;
    return c.u;
}
__device__ __forceinline__ float u2f(u32 u) {
    union {
        float f;
        u32 u;
    } c;
    c.u = u;
    return c.f;
}

__device__ __forceinline__ float ld(float v) { return v; }
__device__ __forceinline__ double ld(double v) { return v; }
__device__ __forceinline__ float ld(bf16_t v) { return u2f((u32)v.bits << 16); }
__device__ __forceinline__ float ld(f16_t v) {
    const u32 h = v.bits;
    const u32 sign = (h & 0x8000u) << 16;
    const u32 e = (h >> 10) & 0x1fu;
    const u32 m = h & 0x3ffu;
    if (e == 0) {
        // Zero or subnormal: m * 2^-24, exact in float.
        return u2f(f2u((float)m * 5.9604644775390625e-8f) | sign);
    }
    if (e == 31) {
        return u2f(sign | 0x7f800000u | (m << 13));
    }
    return u2f(sign | ((e + 112u) << 23) | (m << 13));
}

// Round to the storage type, to nearest even (NaN stays NaN, quiet).
__device__ __forceinline__ void st(float* p, float v) { *p = v; }
__device__ __forceinline__ void st(double* p, double v) { *p = v; }
__device__ __forceinline__ bf16_t to_bf16(float f) {
    const u32 u = f2u(f);
    bf16_t r;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        r.bits = (unsigned short)((u >> 16) | 0x40u);
    } else {
        r.bits = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
    return r;
}
__device__ __forceinline__ f16_t to_f16(float f) {
    const u32 x = f2u(f);
    const u32 sign = (x >> 16) & 0x8000u;
    const u32 ax = x & 0x7fffffffu;
    f16_t r;
    if (ax > 0x7f800000u) {
        r.bits = (unsigned short)(sign | 0x7e00u | (ax >> 13));
    } else if (ax >= 0x477ff000u) {
        r.bits = (unsigned short)(sign | 0x7c00u);  // at or above 65520: infinity
    } else if (ax >= 0x38800000u) {
        // Normal: re-bias the exponent, round the 13 dropped bits to nearest even.
        const u32 v = ax - (112u << 23);
        r.bits = (unsigned short)(sign | ((v + 0xfffu + ((v >> 13) & 1u)) >> 13));
    } else {
        // Subnormal (or zero): the number of 2^-24 steps, rounded to nearest even by adding
        // and subtracting 2^23 in float (exact: the scaled value is below 2^10).
        const float scaled = u2f(ax) * 16777216.0f;
        const float rounded = (scaled + 8388608.0f) - 8388608.0f;
        r.bits = (unsigned short)(sign | (u32)rounded);
    }
    return r;
}
__device__ __forceinline__ void st(bf16_t* p, float v) { *p = to_bf16(v); }
__device__ __forceinline__ void st(f16_t* p, float v) { *p = to_f16(v); }

// `v` rounded to the storage type S and widened back (identity for float and double).
template <typename S>
__device__ __forceinline__ typename Math<S>::M rnd(typename Math<S>::M v) {
    S x;
    st(&x, v);
    return ld(x);
}

__device__ __forceinline__ float sqrt_rn(float x) { return __fsqrt_rn(x); }
__device__ __forceinline__ double sqrt_rn(double x) { return __dsqrt_rn(x); }

// `torch.lerp` as PyTorch's CPU kernel (and profit-core's `lerp`) evaluates it.
// `|w| < 0.5` is written as two comparisons: identical for every input, NaN included.
template <typename T>
__device__ __forceinline__ T lerp_pt(T start, T end, T w) {
    if (w < T(0.5) && -w < T(0.5)) {
        return start + w * (end - start);
    }
    return end - (end - start) * (T(1) - w);
}

template <int RULE>
__device__ __forceinline__ int n_slots(u32 flags) {
    switch (RULE) {
        case SGD: return 0;
        case SGDM: return 1;
        case ADAM: return 2;
        case AMSGRAD: return 3;
        default: return 1 + ((flags & F_CENTERED) ? 1 : 0) + ((flags & F_MOMENTUM) ? 1 : 0);
    }
}

// One element of one inner optimizer step: returns `u` (new parameter `p + u`) and updates the
// slots `x, y, z` (in InnerConfig::slot_names order). Mirrors Rule::update.
template <typename T, int RULE>
__device__ __forceinline__ T rule_update(const T* __restrict__ c, u32 flags, T p, T g, T& x, T& y, T& z) {
    if (RULE == SGD) {
        T d = g + c[3] * p;
        return -(c[2] * d);
    } else if (RULE == SGDM) {
        T d = g + c[3] * p;
        T b = (flags & F_FIRST) ? d : c[4] * x + c[5] * d;
        x = b;
        T step = (flags & F_NESTEROV) ? d + c[4] * b : b;
        return -(c[2] * step);
    } else if (RULE == ADAM || RULE == AMSGRAD) {
        T gg = g + c[2] * p;
        T m1 = lerp_pt(x, gg, c[4]);
        T v1 = y * c[5] + c[6] * gg * gg;
        x = m1;
        y = v1;
        T vv = v1;
        if (RULE == AMSGRAD) {
            T mx = z > v1 ? z : v1;
            z = mx;
            vv = mx;
        }
        T denom = sqrt_rn(vv) / c[7] + c[9];
        return c[3] * p - c[8] * m1 / denom;
    } else {
        // RMSprop. Slots: square_avg, then grad_avg if centered, then momentum_buffer if
        // momentum (Rule::update's mapping).
        T gg = g + c[3] * p;
        T s = c[4] * x + c[5] * gg * gg;
        x = s;
        T avg;
        if (flags & F_CENTERED) {
            T ga = lerp_pt(y, gg, c[6]);
            y = ga;
            avg = sqrt_rn(s - ga * ga) + c[7];
        } else {
            avg = sqrt_rn(s) + c[7];
        }
        if (flags & F_MOMENTUM) {
            T& buf = (flags & F_CENTERED) ? z : y;
            T b = c[8] * buf + gg / avg;
            buf = b;
            return -(c[2] * b);
        }
        return -(c[2] * gg / avg);
    }
}

// The tensor owning flattened block `b`: the last entry with block_start <= b.
__device__ __forceinline__ u32 find_tensor(const Desc* __restrict__ desc, u32 nt, u64 b) {
    u32 lo = 0, hi = nt;
    while (hi - lo > 1) {
        u32 mid = (lo + hi) / 2;
        if (desc[mid].block_start <= b) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    return lo;
}

// The fused pass: host.rs `fused_loop`, APPLY_PER_THREAD elements per thread, all loads of a
// thread issued before its stores.
// `verdict` (null unless the call was decided on the device, see profit_decide_*) is the
// decision's header: anything but 0 in verdict[0] refuses the call; `decided` holds each
// tensor's (grad_scale, proj, delta_scale), by `Desc::tensor`.
template <typename S, int PASS, int RULE>
__device__ __forceinline__ void apply_body(const Desc* __restrict__ desc, u32 nt, u64 total_blocks,
                                           const typename Math<S>::M* __restrict__ scalars,
                                           const double* __restrict__ verdict,
                                           const typename Math<S>::M* __restrict__ decided) {
    typedef typename Math<S>::M T;
    if (verdict != 0 && verdict[0] != 0.0) {
        return;
    }
    const bool reads_d = PASS == REF_ACC || PASS == MAIN_ANCHOR || PASS == MAIN_SUB;
    const bool reads_a = PASS == MAIN_ANCHOR || PASS == MAIN_REALIZED;
    const bool reads_p = PASS != MAIN_ANCHOR;
    for (u64 b = blockIdx.x; b < total_blocks; b += gridDim.x) {
        const Desc* D = desc + find_tensor(desc, nt, b);
        const u64 n = D->n;
        const u64 base = (b - D->block_start) * APPLY_CHUNK + threadIdx.x;
        S* __restrict__ p = (S*)D->p;
        const S* __restrict__ g = (const S*)D->g;
        S* __restrict__ d = (S*)D->d;
        S* __restrict__ a = (S*)D->a;
        S* __restrict__ s0 = (S*)D->s0;
        S* __restrict__ s1 = (S*)D->s1;
        S* __restrict__ s2 = (S*)D->s2;
        const u32 flags = (u32)(D->meta >> 32);
        const T* __restrict__ c = scalars + (u64)(u32)D->meta * SC_STRIDE;
        const T* __restrict__ v = verdict != 0 ? decided + 3 * (D->tensor - 1) : 0;
        const T gs = v != 0 ? v[0] : c[0];
        const T pj = v != 0 ? v[1] : c[1];
        const T ds = v != 0 ? v[2] : c[10];
        const int ns = n_slots<RULE>(flags);

        T gv[APPLY_PER_THREAD], pv[APPLY_PER_THREAD], av[APPLY_PER_THREAD], dv[APPLY_PER_THREAD];
        T xv[APPLY_PER_THREAD], yv[APPLY_PER_THREAD], zv[APPLY_PER_THREAD];
#pragma unroll
        for (int k = 0; k < APPLY_PER_THREAD; ++k) {
            const u64 i = base + (u64)k * APPLY_THREADS;
            gv[k] = T(0);
            pv[k] = T(0);
            av[k] = T(0);
            dv[k] = T(0);
            xv[k] = T(0);
            yv[k] = T(0);
            zv[k] = T(0);
            if (i < n) {
                gv[k] = ld(g[i]);
                if (reads_p) pv[k] = ld(p[i]);
                if (reads_a) av[k] = ld(a[i]);
                if (reads_d) dv[k] = ld(d[i]);
                if (ns > 0) xv[k] = ld(s0[i]);
                if (ns > 1) yv[k] = ld(s1[i]);
                if (ns > 2) zv[k] = ld(s2[i]);
            }
        }
#pragma unroll
        for (int k = 0; k < APPLY_PER_THREAD; ++k) {
            const u64 i = base + (u64)k * APPLY_THREADS;
            if (i < n) {
                T gi = gs * gv[k];
                T p0;
                if (PASS == MAIN_ANCHOR) {
                    p0 = av[k];
                    gi = gi - pj * (dv[k] * ds);
                } else if (PASS == MAIN_SUB) {
                    p0 = rnd<S>(pv[k] - dv[k]);
                    gi = gi - pj * (dv[k] * ds);
                } else if (PASS == MAIN_REALIZED) {
                    const T dr = rnd<S>(pv[k] - av[k]);
                    p0 = av[k];
                    gi = gi - pj * (dr * ds);
                } else {
                    p0 = pv[k];
                }
                T x = xv[k], y = yv[k], z = zv[k];
                T u = rule_update<T, RULE>(c, flags, p0, gi, x, y, z);
                if (ns > 0) st(s0 + i, x);
                if (ns > 1) st(s1 + i, y);
                if (ns > 2) st(s2 + i, z);
                st(p + i, p0 + u);
                if (PASS == REF_FIRST_ANCHOR) {
                    st(a + i, p0);
                    st(d + i, u);
                } else if (PASS == REF_FIRST) {
                    st(d + i, u);
                } else if (PASS == REF_ACC) {
                    st(d + i, dv[k] + u);
                } else if (PASS == REF_ANCHOR) {
                    st(a + i, p0);
                }
            }
        }
    }
}

#define APPLY_ENTRY(T, TN, PASS, PN, RULE, RN)                                                     \
    extern "C" __global__ void __launch_bounds__(APPLY_THREADS)                                   \
        profit_apply_##TN##_##PN##_##RN(const Desc* __restrict__ desc, u32 nt, u64 total_blocks,  \
                                        const Math<T>::M* __restrict__ scalars,                   \
                                        const double* __restrict__ verdict,                       \
                                        const Math<T>::M* __restrict__ decided) {                 \
        apply_body<T, PASS, RULE>(desc, nt, total_blocks, scalars, verdict, decided);             \
    }

#define APPLY_RULES(T, TN, PASS, PN)                  \
    APPLY_ENTRY(T, TN, PASS, PN, SGD, sgd)            \
    APPLY_ENTRY(T, TN, PASS, PN, SGDM, sgdm)          \
    APPLY_ENTRY(T, TN, PASS, PN, ADAM, adam)          \
    APPLY_ENTRY(T, TN, PASS, PN, AMSGRAD, amsgrad)    \
    APPLY_ENTRY(T, TN, PASS, PN, RMSPROP, rmsprop)

#define APPLY_PASSES(T, TN)                                  \
    APPLY_RULES(T, TN, PLAIN, plain)                         \
    APPLY_RULES(T, TN, REF_FIRST_ANCHOR, ref_first_anchor)   \
    APPLY_RULES(T, TN, REF_FIRST, ref_first)                 \
    APPLY_RULES(T, TN, REF_ACC, ref_acc)                     \
    APPLY_RULES(T, TN, MAIN_ANCHOR, main_anchor)             \
    APPLY_RULES(T, TN, MAIN_SUB, main_sub)                   \
    APPLY_RULES(T, TN, REF_ANCHOR, ref_anchor)               \
    APPLY_RULES(T, TN, MAIN_REALIZED, main_realized)

APPLY_PASSES(float, f32)
APPLY_PASSES(double, f64)
APPLY_PASSES(bf16_t, bf16)
APPLY_PASSES(f16_t, f16)

// Fixed-order shared-memory tree over REDUCE_THREADS values of three accumulators; thread 0
// ends with the sums.
__device__ __forceinline__ void block_tree3(double* s_om, double* s_dd, double* s_gg, double om, double dd,
                                            double gg) {
    const u32 t = threadIdx.x;
    s_om[t] = om;
    s_dd[t] = dd;
    s_gg[t] = gg;
    __syncthreads();
#pragma unroll
    for (u32 h = REDUCE_THREADS / 2; h > 0; h >>= 1) {
        if (t < h) {
            s_om[t] = s_om[t] + s_om[t + h];
            s_dd[t] = s_dd[t] + s_dd[t + h];
            s_gg[t] = s_gg[t] + s_gg[t + h];
        }
        __syncthreads();
    }
}

// Pass 1 of the reductions: per flattened block, (<d, g>, |d|^2, |g|^2) in f64 into
// `partials[3 * b ..]`. The delta is the stored `d`, or (when `d` is 0 and `a` is not) the
// realized `p - a` rounded to the element type; a tensor with neither reduces |g|^2 only.
template <typename S>
__device__ __forceinline__ void reduce_partials_body(const Desc* __restrict__ desc, u32 nt, u64 total_blocks,
                                                     double* __restrict__ partials) {
    __shared__ double s_om[REDUCE_THREADS];
    __shared__ double s_dd[REDUCE_THREADS];
    __shared__ double s_gg[REDUCE_THREADS];
    for (u64 b = blockIdx.x; b < total_blocks; b += gridDim.x) {
        const Desc* D = desc + find_tensor(desc, nt, b);
        const u64 n = D->n;
        const u64 base = (b - D->block_start) * REDUCE_CHUNK + threadIdx.x;
        const S* __restrict__ g = (const S*)D->g;
        const S* __restrict__ d = (const S*)D->d;
        const S* __restrict__ p = (const S*)D->p;
        const S* __restrict__ a = (const S*)D->a;
        double om = 0.0, dd = 0.0, gg = 0.0;
        if (d != 0) {
#pragma unroll
            for (int k = 0; k < REDUCE_PER_THREAD; ++k) {
                const u64 i = base + (u64)k * REDUCE_THREADS;
                if (i < n) {
                    const double x = (double)ld(d[i]);
                    const double y = (double)ld(g[i]);
                    om = om + x * y;
                    dd = dd + x * x;
                    gg = gg + y * y;
                }
            }
        } else if (a != 0) {
#pragma unroll
            for (int k = 0; k < REDUCE_PER_THREAD; ++k) {
                const u64 i = base + (u64)k * REDUCE_THREADS;
                if (i < n) {
                    const double x = (double)rnd<S>(ld(p[i]) - ld(a[i]));
                    const double y = (double)ld(g[i]);
                    om = om + x * y;
                    dd = dd + x * x;
                    gg = gg + y * y;
                }
            }
        } else {
#pragma unroll
            for (int k = 0; k < REDUCE_PER_THREAD; ++k) {
                const u64 i = base + (u64)k * REDUCE_THREADS;
                if (i < n) {
                    const double y = (double)ld(g[i]);
                    gg = gg + y * y;
                }
            }
        }
        block_tree3(s_om, s_dd, s_gg, om, dd, gg);
        if (threadIdx.x == 0) {
            partials[3 * b + 0] = s_om[0];
            partials[3 * b + 1] = s_dd[0];
            partials[3 * b + 2] = s_gg[0];
        }
        __syncthreads();
    }
}

#define REDUCE_ENTRY(S, TN)                                                                        \
    extern "C" __global__ void __launch_bounds__(REDUCE_THREADS) profit_reduce_partials_##TN(           \
        const Desc* __restrict__ desc, u32 nt, u64 total_blocks, double* __restrict__ partials) {        \
        reduce_partials_body<S>(desc, nt, total_blocks, partials);                                      \
    }

REDUCE_ENTRY(float, f32)
REDUCE_ENTRY(double, f64)
REDUCE_ENTRY(bf16_t, bf16)
REDUCE_ENTRY(f16_t, f16)

// Pass 2 of the reductions: per tensor (grid-stride over table entries), the fixed-order sum
// of its block partials into `out[3 * (tensor - 1) ..]` (by the tensor's index in the
// optimizer's list; entries of tensors not in the table are left as they are).
extern "C" __global__ void __launch_bounds__(REDUCE_THREADS)
    profit_reduce_final(const Desc* __restrict__ desc, u32 nt, u64 total_blocks, const double* __restrict__ partials,
                        double* __restrict__ out) {
    __shared__ double s_om[REDUCE_THREADS];
    __shared__ double s_dd[REDUCE_THREADS];
    __shared__ double s_gg[REDUCE_THREADS];
    for (u32 t = blockIdx.x; t < nt; t += gridDim.x) {
        const u64 first = desc[t].block_start;
        const u64 end = t + 1 < nt ? desc[t + 1].block_start : total_blocks;
        double om = 0.0, dd = 0.0, gg = 0.0;
        for (u64 b = first + threadIdx.x; b < end; b += REDUCE_THREADS) {
            om = om + partials[3 * b + 0];
            dd = dd + partials[3 * b + 1];
            gg = gg + partials[3 * b + 2];
        }
        block_tree3(s_om, s_dd, s_gg, om, dd, gg);
        if (threadIdx.x == 0) {
            const u64 o = 3 * (desc[t].tensor - 1);
            out[o + 0] = s_om[0];
            out[o + 1] = s_dd[0];
            out[o + 2] = s_gg[0];
        }
        __syncthreads();
    }
}

// ---- Deciding on the device: profit-core's `Decision::evaluate`, operation for operation ----

#define D_CHECK_FINITE 1u
#define D_PROJECT 2u
#define D_GLOBAL 4u
#define D_CLIP 8u

template <typename T>
struct MaxExp;
template <>
struct MaxExp<float> {
    static const int value = 127;
};
template <>
struct MaxExp<double> {
    static const int value = 1023;
};

// Finite (neither infinite nor NaN), without relying on a math library's classification.
template <typename T>
__device__ __forceinline__ bool finite_m(T x) {
    return x - x == T(0);
}

// The fire test and coefficient of profit-core's `projection_coef`.
__device__ __forceinline__ double projection_coef(double omega, double dsq) {
    return (omega < 0.0 && dsq > 0.0) ? omega / dsq : 0.0;
}

// profit-core's `projection_scalars`: false when `proj` is not finite in T even scaled.
template <typename T>
__device__ __forceinline__ bool projection_scalars(double coef, double dsq, T& proj, T& ds) {
    if (coef == 0.0) {
        proj = T(0);
        ds = T(1);
        return true;
    }
    const double norm = sqrt_rn(dsq);
    int m = 0;
    if (norm < 1.0) {
        if (norm > 0.0) {
            m = -ilogb(norm);
            m = m < 0 ? 0 : (m > MaxExp<T>::value ? MaxExp<T>::value : m);
        } else {
            m = MaxExp<T>::value;
        }
    }
    const double scale = ldexp(1.0, m);
    const T p = (T)(coef / scale);
    if (!finite_m(p)) {
        return false;
    }
    proj = p;
    ds = (T)scale;
    return true;
}

// Smallest value over the block (an order-independent, exact reduction); every thread gets it.
__device__ __forceinline__ u32 block_min(u32* s, u32 v) {
    const u32 t = threadIdx.x;
    s[t] = v;
    __syncthreads();
#pragma unroll
    for (u32 h = REDUCE_THREADS / 2; h > 0; h >>= 1) {
        if (t < h && s[t + h] < s[t]) {
            s[t] = s[t + h];
        }
        __syncthreads();
    }
    const u32 r = s[0];
    __syncthreads();
    return r;
}

// One block of REDUCE_THREADS threads. `red` holds the call's reductions, three per tensor for
// all `n` tensors (zero where a tensor is not in the call); writes `verdict` (3 doubles: 0 apply,
// 1 non-finite gradient, 2 coefficient overflow; the tensor; the coefficient) and `decided`
// (grad_scale, proj, delta_scale per tensor, in the math type T).
template <typename T>
__device__ __forceinline__ void decide_body(const double* __restrict__ red, u32 n, u32 flags, double max_norm,
                                            double sign, double* __restrict__ verdict, T* __restrict__ decided) {
    __shared__ double s_om[REDUCE_THREADS];
    __shared__ double s_dd[REDUCE_THREADS];
    __shared__ double s_gg[REDUCE_THREADS];
    __shared__ u32 s_min[REDUCE_THREADS];
    const u32 t = threadIdx.x;
    if (flags & D_CHECK_FINITE) {
        u32 first = n;
        for (u32 i = t; i < n; i += REDUCE_THREADS) {
            if (!finite_m(red[3 * (u64)i + 2])) {
                first = i;
                break;
            }
        }
        first = block_min(s_min, first);
        if (first < n) {
            if (t == 0) {
                verdict[0] = 1.0;
                verdict[1] = (double)first;
                verdict[2] = 0.0;
            }
            return;
        }
    }
    // profit-core's `total`: lane t adds entries t, t + 256, ... in order, then the tree.
    double om = 0.0, dd = 0.0, gg = 0.0;
    for (u32 i = t; i < n; i += REDUCE_THREADS) {
        om = om + red[3 * (u64)i + 0];
        dd = dd + red[3 * (u64)i + 1];
        gg = gg + red[3 * (u64)i + 2];
    }
    block_tree3(s_om, s_dd, s_gg, om, dd, gg);
    const double tom = s_om[0], tdd = s_dd[0], tgg = s_gg[0];
    double scale = 1.0;
    if (flags & D_CLIP) {
        const double a = max_norm / (sqrt_rn(tgg) + 1e-6);
        scale = a < 1.0 ? a : 1.0;  // Rust's f64::min(a, 1.0), NaN included
    }
    const T gs = (T)(sign * scale);
    const double gcoef = projection_coef(tom * scale, tdd);
    u32 bad = n;
    double bad_coef = 0.0;
    for (u32 i = t; i < n; i += REDUCE_THREADS) {
        double coef = 0.0, dsq = 1.0;
        if (flags & D_PROJECT) {
            if (flags & D_GLOBAL) {
                coef = gcoef;
                dsq = tdd;
            } else {
                dsq = red[3 * (u64)i + 1];
                coef = projection_coef(red[3 * (u64)i + 0] * scale, dsq);
            }
        }
        T pj = T(0), ds = T(1);
        if (!projection_scalars<T>(sign * coef, dsq, pj, ds) && bad == n) {
            bad = i;
            bad_coef = coef;
        }
        decided[3 * (u64)i + 0] = gs;
        decided[3 * (u64)i + 1] = pj;
        decided[3 * (u64)i + 2] = ds;
    }
    const u32 first_bad = block_min(s_min, bad);
    if (first_bad < n) {
        if (bad == first_bad) {
            verdict[0] = 2.0;
            verdict[1] = (double)first_bad;
            verdict[2] = bad_coef;
        }
    } else if (t == 0) {
        verdict[0] = 0.0;
        verdict[1] = 0.0;
        verdict[2] = 0.0;
    }
}

#define DECIDE_ENTRY(T, TN)                                                                        \
    extern "C" __global__ void __launch_bounds__(REDUCE_THREADS)                                   \
        profit_decide_##TN(const double* __restrict__ red, u32 n, u32 flags, double max_norm,      \
                           double sign, double* __restrict__ verdict, T* __restrict__ decided) {   \
        decide_body<T>(red, n, flags, max_norm, sign, verdict, decided);                          \
    }

DECIDE_ENTRY(float, f32)
DECIDE_ENTRY(double, f64)
