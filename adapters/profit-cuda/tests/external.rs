//! An external main optimizer (`profit_core::optim::External`: PROFIT captures the projected gradient
//! for an optimizer outside the library) has no CUDA kernel: its first warm-up or main call
//! is refused with `BackendError::Unsupported` before anything is launched, and the weights
//! stay as they were. Prints `SKIPPED` and passes without a CUDA driver or device (set
//! `PROFIT_REQUIRE_GPU=1` to fail instead). On the emulated driver: build
//! `cuda-kernels/emu/emu.cpp` into a `libcuda.so` as `cuda-kernels/emu/test-emulated.sh` does,
//! then `LD_LIBRARY_PATH=<its folder> PROFIT_REQUIRE_GPU=1 cargo test -p profit-cuda --test
//! external`.

use profit_core::error::BackendError;
use profit_core::optim::External;
use profit_core::{Phase, Profit, ProfitConfig, ProfitError, Sgd};
use profit_cuda::{Cuda, CudaBackend};

fn gpu() -> Option<CudaBackend> {
    match CudaBackend::new(0) {
        Ok(g) => Some(g),
        Err(e) if std::env::var("PROFIT_REQUIRE_GPU").as_deref() == Ok("1") => {
            panic!("PROFIT_REQUIRE_GPU=1 but no usable GPU: {e}")
        }
        Err(e) => {
            println!("SKIPPED: no CUDA device: {e}");
            None
        }
    }
}

#[test]
fn external_main_is_refused_and_changes_nothing() {
    let Some(g) = gpu() else { return };
    for warmup_steps in [0u64, 1] {
        let config = ProfitConfig {
            warmup_steps,
            ..ProfitConfig::new(Sgd { lr: 1e-2, ..Default::default() }, External { lr: 1e-1 })
        };
        let w0: Vec<f32> = (0..300).map(|i| (i as f32 * 0.37).sin()).collect();
        let gv: Vec<f32> = (0..300).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut w = g.upload(&[300], &w0).unwrap();
        let grad = g.upload(&[300], &gv).unwrap();
        let mut opt = Profit::<Cuda<f32>>::new(config, &[&w]).unwrap();
        if warmup_steps == 0 {
            // The reference call runs PROFIT's own SGD on the device.
            let r = opt.step(&mut [&mut w], &[&grad]).unwrap();
            assert_eq!(r.phase, Phase::Reference);
        }
        let before = w.to_vec().unwrap();
        let calls = opt.calls();
        let err = opt.step(&mut [&mut w], &[&grad]).expect_err("no capture kernel");
        assert!(matches!(err, ProfitError::Backend(BackendError::Unsupported(_))), "{err:?}");
        assert_eq!(w.to_vec().unwrap(), before, "warmup_steps {warmup_steps}");
        assert_eq!(opt.calls(), calls);
    }
}
