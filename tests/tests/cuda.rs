//! The conformance suite on the CUDA backend (`profit-cuda`), f32 and f64, and PyTorch's bf16
//! and f16 trajectories (`golden16/`) on bf16 and f16. Without a CUDA driver or device every
//! test prints `SKIPPED: backend unavailable: ...` and passes.

use profit_conformance::{conformance_suite, Harness};
use profit_core::error::BackendError;
use profit_cuda::{Cuda, CudaBackend, CudaElement, CudaTensor};

struct Gpu<E> {
    backend: CudaBackend,
    _elem: std::marker::PhantomData<E>,
}

impl<E: CudaElement> Harness for Gpu<E> {
    type B = Cuda<E>;
    fn label(&self) -> String {
        format!("cuda-{}", E::DTYPE)
    }
    fn tensor(&self, shape: &[usize], data: &[f64]) -> CudaTensor<E> {
        let v: Vec<E> = data.iter().map(|&x| E::from_f64(x)).collect();
        self.backend.upload(shape, &v).expect("upload to the GPU")
    }
    fn values(&self, t: &CudaTensor<E>) -> Vec<f64> {
        t.to_vec().expect("download from the GPU").iter().map(|x| x.as_f64()).collect()
    }
    fn resume_stride(&self) -> usize {
        4
    }
}

/// The GPU harness, or why the suite is skipped. With `PROFIT_REQUIRE_GPU=1` (as on a GPU
/// machine) a missing GPU fails the tests instead of skipping them.
fn gpu<E: CudaElement>() -> Result<Gpu<E>, String> {
    let made =
        CudaBackend::new(0).map(|backend| Gpu { backend, _elem: Default::default() }).map_err(|e| match e {
            BackendError::Unavailable(why) => why,
            other => other.to_string(),
        });
    if let (Err(why), Ok("1")) = (&made, std::env::var("PROFIT_REQUIRE_GPU").as_deref()) {
        panic!("PROFIT_REQUIRE_GPU=1 but no usable GPU: {why}");
    }
    made
}

conformance_suite!(cuda_f32, gpu::<f32>);
conformance_suite!(cuda_f64, gpu::<f64>);

/// PyTorch's 16-bit trajectories (`golden16/README.md`) on the GPU in bf16 and f16: files
/// rounded once per stored value bitwise, torch's per-op files within the measured tolerance.
#[test]
fn golden16_bf16() {
    profit_conformance::with_harness(gpu::<half::bf16>, |h| {
        profit_conformance::golden::golden16_all(h);
    });
}

#[test]
fn golden16_f16() {
    profit_conformance::with_harness(gpu::<half::f16>, |h| {
        profit_conformance::golden::golden16_all(h);
    });
}
