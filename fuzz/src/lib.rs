//! Shared set-up for the checkpoint-loader fuzz target: a small optimizer over `Vec<f32>`
//! tensors with every kind of state buffer (SGD momentum reference, AMSGrad Adam main, anchor).

use profit_core::host::{VecBackend as Backend, VecTensor};
use profit_core::checkpoint::{LoadOptions, SaveOptions};
use profit_core::{Adam, Profit, ProfitConfig, Sgd};

/// The backend under test: profit-core's built-in host backend.
pub type VecBackend = Backend<f32>;
/// Its tensor.
pub type Tensor = VecTensor<f32>;

/// Parameters `w` [3, 2] and `b` [2].
pub fn params() -> Vec<Tensor> {
    vec![
        Tensor { data: (0..6).map(|i| i as f32 * 0.1 - 0.2).collect(), shape: vec![3, 2] },
        Tensor { data: vec![0.5, -0.5], shape: vec![2] },
    ]
}

/// Gradients for call `i`.
pub fn grads(i: usize) -> Vec<Tensor> {
    let s = (i % 5) as f32 - 2.0;
    vec![
        Tensor { data: (0..6).map(|j| (j as f32 - 2.5) * 0.1 * s).collect(), shape: vec![3, 2] },
        Tensor { data: vec![0.3 * s, -0.1], shape: vec![2] },
    ]
}

/// A fresh optimizer over `params`.
pub fn optimizer(p: &[Tensor]) -> Profit<VecBackend> {
    let config = ProfitConfig {
        n_ref: 2,
        ..ProfitConfig::new(
            Sgd { lr: 1e-3, momentum: 0.9, ..Sgd::default() },
            Adam { lr: 1e-2, amsgrad: true, ..Adam::default() },
        )
    };
    Profit::with_names(config, &[("w", &p[0]), ("b", &p[1])]).expect("valid config")
}

/// Save with the parameters' fingerprint.
pub fn save(opt: &Profit<VecBackend>, p: &[Tensor]) -> Vec<u8> {
    opt.save_checkpoint(&p.iter().collect::<Vec<_>>(), SaveOptions::default()).expect("save")
}

/// Load with the parameters `p`.
pub fn load(opt: &mut Profit<VecBackend>, p: &mut [Tensor], bytes: &[u8]) -> Result<(), profit_core::ProfitError> {
    opt.load_checkpoint(bytes, &mut p.iter_mut().collect::<Vec<_>>(), LoadOptions::default())
}

/// Run `calls` steps.
pub fn run(opt: &mut Profit<VecBackend>, p: &mut [Tensor], calls: usize) {
    for i in 0..calls {
        let g = grads(i);
        let (a, b) = p.split_at_mut(1);
        let _ = opt.step(&mut [&mut a[0], &mut b[0]], &[&g[0], &g[1]]);
    }
}
