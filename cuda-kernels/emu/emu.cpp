// A CPU stand-in for the CUDA driver (libcuda.so), for testing profit-cuda on machines without
// a GPU. It implements the few driver calls cudarc makes for profit-cuda, with "device" memory
// in host memory, and runs the kernels of ../profit.cu compiled as C++: every CUDA thread of a
// block is a fiber (ucontext), switched at __syncthreads, blocks one after another. All emulator
// state is thread-local, so test harnesses may launch from several threads at once.
//
// It checks the Rust side (tables, launches, copies) and the kernels' logic and arithmetic
// (compiled without FMA contraction, as the PTX is); it says nothing about the PTX itself,
// timing, or races between blocks. Built and used by cuda-kernels/emu/test-emulated.sh.

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <chrono>
#include <map>
#include <string>
#include <ucontext.h>
#include <vector>

// ---- CUDA C++ dialect shims for ../profit.cu ------------------------------------------------
struct emu_dim3 {
    unsigned x, y, z;
};
static thread_local emu_dim3 threadIdx, blockIdx, blockDim, gridDim;
static void __syncthreads();
#define __device__
#define __forceinline__ inline
#define __global__
#define __launch_bounds__(x)
#define __restrict__ __restrict
#define __shared__ static thread_local
static inline float __fsqrt_rn(float x) { return std::sqrt(x); }
static inline double __dsqrt_rn(double x) { return std::sqrt(x); }

#include "../profit.cu"

// ---- fibers ---------------------------------------------------------------------------------
typedef void (*Body)(void** params);
static const size_t STACK = 256 * 1024;
static thread_local std::vector<ucontext_t> fib;
static thread_local std::vector<char*> stacks;
static thread_local std::vector<int> done;
static thread_local ucontext_t sched;
static thread_local unsigned current;
static thread_local Body cur_body;
static thread_local void** cur_params;
static int emu_failed;

static void fiber_main() {
    cur_body(cur_params);
    done[current] = 1;
    swapcontext(&fib[current], &sched);
}

static void __syncthreads() { swapcontext(&fib[current], &sched); }

static void run_grid(Body body, void** params, unsigned grid, unsigned block) {
    if (fib.size() < block) {
        fib.resize(block);
        while (stacks.size() < block) stacks.push_back((char*)std::malloc(STACK));
    }
    done.assign(block, 0);
    cur_body = body;
    cur_params = params;
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    for (unsigned b = 0; b < grid; ++b) {
        blockIdx = {b, 0, 0};
        for (unsigned t = 0; t < block; ++t) {
            getcontext(&fib[t]);
            fib[t].uc_stack.ss_sp = stacks[t];
            fib[t].uc_stack.ss_size = STACK;
            fib[t].uc_link = nullptr;
            makecontext(&fib[t], fiber_main, 0);
            done[t] = 0;
        }
        // Round robin: every fiber runs to its next barrier (or its end), in thread order.
        for (;;) {
            unsigned alive = 0;
            for (unsigned t = 0; t < block; ++t) {
                if (done[t]) continue;
                current = t;
                threadIdx = {t, 0, 0};
                swapcontext(&sched, &fib[t]);
                alive += !done[t];
            }
            if (!alive) break;
        }
    }
}

// ---- kernel registry ------------------------------------------------------------------------
template <typename T, void (*F)(const Desc*, u32, u64, const T*, const double*, const T*)>
static void apply_launcher(void** p) {
    F(*(const Desc**)p[0], *(u32*)p[1], *(u64*)p[2], *(const T**)p[3], *(const double**)p[4], *(const T**)p[5]);
}
template <typename T, void (*F)(const double*, u32, u32, double, double, double*, T*)>
static void decide_launcher(void** p) {
    F(*(const double**)p[0], *(u32*)p[1], *(u32*)p[2], *(double*)p[3], *(double*)p[4], *(double**)p[5], *(T**)p[6]);
}
template <void (*F)(const Desc*, u32, u64, double*)>
static void partials_launcher(void** p) {
    F(*(const Desc**)p[0], *(u32*)p[1], *(u64*)p[2], *(double**)p[3]);
}
static void final_launcher(void** p) {
    profit_reduce_final(*(const Desc**)p[0], *(u32*)p[1], *(u64*)p[2], *(const double**)p[3], *(double**)p[4]);
}

static std::map<std::string, Body>& registry() {
    static std::map<std::string, Body> r;
    if (r.empty()) {
#define REG(T, TN, PN, RN) r["profit_apply_" #TN "_" #PN "_" #RN] = apply_launcher<T, profit_apply_##TN##_##PN##_##RN>;
#define REG_RULES(T, TN, PN) REG(T, TN, PN, sgd) REG(T, TN, PN, sgdm) REG(T, TN, PN, adam) REG(T, TN, PN, amsgrad) REG(T, TN, PN, rmsprop)
#define REG_PASSES(T, TN)                                                                                  \
    REG_RULES(T, TN, plain) REG_RULES(T, TN, ref_first_anchor) REG_RULES(T, TN, ref_first)                 \
        REG_RULES(T, TN, ref_acc) REG_RULES(T, TN, main_anchor) REG_RULES(T, TN, main_sub)                \
            REG_RULES(T, TN, ref_anchor) REG_RULES(T, TN, main_realized)
        REG_PASSES(float, f32)
        REG_PASSES(double, f64)
        REG_PASSES(float, bf16)  // 16-bit storage: scalars in float
        REG_PASSES(float, f16)
        r["profit_reduce_partials_f32"] = partials_launcher<profit_reduce_partials_f32>;
        r["profit_reduce_partials_f64"] = partials_launcher<profit_reduce_partials_f64>;
        r["profit_reduce_partials_bf16"] = partials_launcher<profit_reduce_partials_bf16>;
        r["profit_reduce_partials_f16"] = partials_launcher<profit_reduce_partials_f16>;
        r["profit_reduce_final"] = final_launcher;
        r["profit_decide_f32"] = decide_launcher<float, profit_decide_f32>;
        r["profit_decide_f64"] = decide_launcher<double, profit_decide_f64>;
    }
    return r;
}

// ---- driver API -----------------------------------------------------------------------------
typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
enum { OK = 0, INVALID_VALUE = 1, OUT_OF_MEMORY = 2, INVALID_DEVICE = 101, NOT_FOUND = 500 };
static int ctx_token, stream_token, module_token;
static void* current_ctx;
static const int SM_COUNT = 2;

static double now_ms() {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

extern "C" {
CUresult cuInit(unsigned) { return OK; }
CUresult cuDriverGetVersion(int* v) { *v = 12060; return OK; }
CUresult cuDeviceGetCount(int* n) { *n = 1; return OK; }
CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    if (ordinal != 0) return INVALID_DEVICE;
    *d = 0;
    return OK;
}
CUresult cuDeviceGetAttribute(int* v, int attrib, CUdevice) {
    switch (attrib) {
        case 16: *v = SM_COUNT; break;   // CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT
        case 115: *v = 0; break;         // CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED
        default: *v = 0;
    }
    return OK;
}
CUresult cuDeviceGetName(char* name, int len, CUdevice) {
    std::snprintf(name, len, "CPU emulation of the CUDA driver (profit cuda-kernels/emu)");
    return OK;
}
CUresult cuDeviceTotalMem_v2(size_t* b, CUdevice) { *b = (size_t)1 << 34; return OK; }
CUresult cuDevicePrimaryCtxRetain(void** ctx, CUdevice) { *ctx = &ctx_token; return OK; }
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) { return OK; }
CUresult cuCtxSetCurrent(void* ctx) { current_ctx = ctx; return OK; }
CUresult cuCtxGetCurrent(void** ctx) { *ctx = current_ctx; return OK; }
CUresult cuCtxSynchronize() { return OK; }
CUresult cuStreamCreate(void** s, unsigned) { *s = &stream_token; return OK; }
CUresult cuStreamDestroy_v2(void*) { return OK; }
CUresult cuStreamSynchronize(void*) { return emu_failed ? INVALID_VALUE : OK; }
CUresult cuStreamWaitEvent(void*, void*, unsigned) { return OK; }
CUresult cuModuleLoadData(void** m, const void* image) {
    if (!image || !std::strstr((const char*)image, ".entry")) return INVALID_VALUE;
    *m = &module_token;
    return OK;
}
CUresult cuModuleUnload(void*) { return OK; }
CUresult cuModuleGetFunction(void** f, void*, const char* name) {
    auto it = registry().find(name);
    if (it == registry().end()) return NOT_FOUND;
    *f = (void*)it->second;
    return OK;
}
static CUresult alloc(CUdeviceptr* p, size_t n) {
    void* q = nullptr;
    if (posix_memalign(&q, 256, n ? n : 1)) return OUT_OF_MEMORY;
    std::memset(q, 0xA5, n);  // garbage, as fresh device memory may hold
    *p = (CUdeviceptr)q;
    return OK;
}
CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t n) { return alloc(p, n); }
CUresult cuMemHostAlloc(void** p, size_t n, unsigned) { return alloc((CUdeviceptr*)p, n); }
CUresult cuMemFreeHost(void* p) { std::free(p); return OK; }
CUresult cuMemAllocAsync(CUdeviceptr* p, size_t n, void*) { return alloc(p, n); }
CUresult cuMemFree_v2(CUdeviceptr p) { std::free((void*)p); return OK; }
CUresult cuMemFreeAsync(CUdeviceptr p, void*) { std::free((void*)p); return OK; }
CUresult cuMemsetD8Async(CUdeviceptr p, unsigned char v, size_t n, void*) { std::memset((void*)p, v, n); return OK; }
CUresult cuMemsetD8_v2(CUdeviceptr p, unsigned char v, size_t n) { std::memset((void*)p, v, n); return OK; }
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void* s, size_t n, void*) { std::memcpy((void*)d, s, n); return OK; }
CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void* s, size_t n) { std::memcpy((void*)d, s, n); return OK; }
CUresult cuMemcpyDtoHAsync_v2(void* d, CUdeviceptr s, size_t n, void*) { std::memcpy(d, (void*)s, n); return OK; }
CUresult cuMemcpyDtoH_v2(void* d, CUdeviceptr s, size_t n) { std::memcpy(d, (void*)s, n); return OK; }
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr s, size_t n, void*) { std::memmove((void*)d, (void*)s, n); return OK; }
CUresult cuMemcpyDtoD_v2(CUdeviceptr d, CUdeviceptr s, size_t n) { std::memmove((void*)d, (void*)s, n); return OK; }
CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shmem, void*, void** params, void** extra) {
    if (!f || gy != 1 || gz != 1 || by != 1 || bz != 1 || shmem != 0 || extra || gx == 0 || bx == 0 || bx > 1024) {
        std::fprintf(stderr, "cuda-emu: unsupported launch (%u,%u,%u)x(%u,%u,%u) shmem %u\n", gx, gy, gz, bx, by, bz, shmem);
        emu_failed = 1;
        return INVALID_VALUE;
    }
    run_grid((Body)f, params, gx, bx);
    return OK;
}
struct Event {
    double t;
};
CUresult cuEventCreate(void** e, unsigned) { *e = new Event{0}; return OK; }
CUresult cuEventDestroy_v2(void* e) { delete (Event*)e; return OK; }
CUresult cuEventRecord(void* e, void*) { ((Event*)e)->t = now_ms(); return OK; }
CUresult cuEventSynchronize(void*) { return OK; }
CUresult cuEventQuery(void*) { return OK; }
CUresult cuEventElapsedTime(float* ms, void* a, void* b) { *ms = (float)(((Event*)b)->t - ((Event*)a)->t); return OK; }
CUresult cuEventElapsedTime_v2(float* ms, void* a, void* b) { return cuEventElapsedTime(ms, a, b); }
CUresult cuGetErrorString(CUresult, const char** s) { *s = "cuda-emu error"; return OK; }
CUresult cuGetErrorName(CUresult, const char** s) { *s = "CUDA_EMU_ERROR"; return OK; }
}
