//! Checks that need no GPU: the embedded PTX, its agreement with the kernel source and the
//! Rust side, and the unavailable-backend error path.

use profit_core::error::BackendError;
use profit_cuda::kernels::{self, entry_points, ptx_entries, ptx_isa_version, COMMITTED_PTX, NVCC_PTX};
use profit_cuda::CudaBackend;

const SOURCE: &str = include_str!("../kernels/profit.cu");

/// `#define NAME value` from the kernel source, evaluated for plain numbers and `(A * B)`.
fn define(name: &str) -> u64 {
    let line = SOURCE
        .lines()
        .find_map(|l| l.strip_prefix("#define ")?.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("#define {name} not in profit.cu"));
    let v = line.trim().trim_start_matches('(').trim_end_matches(')');
    match v.split_once(" * ") {
        Some((a, b)) => define(a) * define(b),
        None => v.parse().unwrap_or_else(|_| panic!("#define {name} {v}: not a number")),
    }
}

#[test]
fn committed_ptx_has_every_entry_the_rust_side_launches() {
    let have = ptx_entries(COMMITTED_PTX);
    let missing: Vec<String> = entry_points().into_iter().filter(|e| !have.contains(&e.as_str())).collect();
    assert!(missing.is_empty(), "entries missing from cuda-kernels/ptx/profit.ptx: {missing:?}");
    assert_eq!(have.len(), entry_points().len(), "the PTX has entries the Rust side does not know");
}

#[test]
fn build_time_ptx_if_any_has_every_entry() {
    if NVCC_PTX.is_empty() {
        println!("no nvcc at build time: only the committed PTX is embedded");
        return;
    }
    let have = ptx_entries(NVCC_PTX);
    for e in entry_points() {
        assert!(have.contains(&e.as_str()), "{e} missing from the build-time PTX");
    }
}

#[test]
fn committed_ptx_targets_what_a_cuda_13_0_driver_loads() {
    // Driver 580 (CUDA 13.0) loads PTX ISA up to 9.0; CUDA 13.5's nvvm emits 9.5.
    let v = ptx_isa_version(COMMITTED_PTX).expect(".version line");
    assert!(v <= (9, 0), "PTX ISA {v:?} is newer than a CUDA 13.0 driver loads: rebuild with build-ptx.sh");
    assert!(COMMITTED_PTX.lines().any(|l| l.trim() == ".target sm_80"), "PTX must target compute_80");
    assert!(
        COMMITTED_PTX.contains("Cuda compilation tools, release 13.0"),
        "PTX not made by the pinned CUDA 13.0 nvcc"
    );
}

#[test]
fn launch_constants_match_the_kernel_source() {
    assert_eq!(define("APPLY_THREADS"), kernels::APPLY_THREADS as u64);
    assert_eq!(define("APPLY_CHUNK"), kernels::APPLY_CHUNK);
    assert_eq!(define("REDUCE_THREADS"), kernels::REDUCE_THREADS as u64);
    assert_eq!(define("REDUCE_CHUNK"), kernels::REDUCE_CHUNK);
    assert_eq!(define("SC_STRIDE"), kernels::SC_STRIDE as u64);
    // struct Desc: ten u64 words.
    let desc = SOURCE.split("struct Desc {").nth(1).and_then(|s| s.split("};").next()).expect("struct Desc");
    let words: usize = desc
        .lines()
        .filter_map(|l| l.trim().strip_prefix("u64 "))
        .map(|l| l.split(';').next().unwrap_or("").split(',').count())
        .sum();
    assert_eq!(words, kernels::DESC_WORDS);
}

#[test]
fn kernel_source_names_every_pass_and_rule() {
    for p in kernels::PASSES {
        assert!(SOURCE.contains(&format!(", {p})")), "pass {p} not instantiated in profit.cu");
    }
    for r in kernels::RULES {
        assert!(SOURCE.contains(&format!(", {r})")), "rule {r} not instantiated in profit.cu");
    }
}

#[test]
fn missing_device_is_a_typed_error_not_a_panic() {
    // No machine has this many GPUs: with or without a driver, a typed error comes back.
    match CudaBackend::new(1 << 20) {
        Err(BackendError::Unavailable(why)) => println!("as expected: {why}"),
        other => panic!("expected BackendError::Unavailable, got {other:?}"),
    }
    if !CudaBackend::driver_present() {
        match CudaBackend::new(0) {
            Err(BackendError::Unavailable(why)) => assert!(why.contains("no CUDA driver"), "{why}"),
            other => panic!("expected BackendError::Unavailable without a driver, got {other:?}"),
        }
    }
}
