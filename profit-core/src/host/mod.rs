//! Backends whose tensors live in host memory: implement [`HostBackend`] (shape, allocation,
//! slice access) and get [`TensorOps`] with the fused single-pass CPU loops (`cpu`: one
//! monomorphized loop per pass variant and optimizer flag, deterministic f64 reductions, AVX2
//! where the CPU has it), multi-threaded with rayon (feature `rayon`, on by default): tensors of
//! at least [`PAR_MIN`] elements are split across threads at [`CHUNK`] boundaries, and many
//! tensors run in parallel with each other.
//!
//! Speed: measured by `profit bench` (see `BENCHMARKS.md`).

pub use crate::cpu::reduce::realized;
pub use crate::cpu::{reduce_slices, DeltaSlices, CHUNK, PAR_MIN};

use crate::backend::{Batch, DeltaView, Kernel, Reduction, StorageOrder, TensorOps, TensorState};
use crate::cpu::fused::{run, Lanes};
use crate::element::Element;
use crate::error::BackendError;

/// A tensor library whose tensors are contiguous host memory.
///
/// Implementing this trait gives a [`TensorOps`] implementation through a blanket impl.
///
/// ```
/// use profit_core::{host::HostBackend, error::BackendError};
///
/// /// Plain `Vec<f32>` tensors (one dimension).
/// struct MyVecs;
/// impl HostBackend for MyVecs {
///     type Elem = f32;
///     type Tensor = Vec<f32>;
///     const NAME: &'static str = "my-vecs";
///     fn shape(t: &Vec<f32>) -> Vec<usize> { vec![t.len()] }
///     fn zeros_like(t: &Vec<f32>) -> Vec<f32> { vec![0.0; t.len()] }
///     fn as_slice(t: &Vec<f32>) -> Result<&[f32], BackendError> { Ok(t) }
///     fn as_mut_slice(t: &mut Vec<f32>) -> Result<&mut [f32], BackendError> { Ok(t) }
/// }
///
/// let mut w = vec![1.0f32, 2.0];
/// let g = vec![0.5f32, -0.5];
/// let mut opt = profit_core::plain::Plain::<MyVecs>::new(
///     profit_core::Sgd { lr: 0.1, ..Default::default() }.into(),
///     &[&w],
/// ).unwrap();
/// opt.step(&mut [&mut w], &[&g]).unwrap();
/// assert_eq!(w, vec![0.95, 2.05]);
/// ```
pub trait HostBackend: Sized + 'static {
    /// Element type.
    type Elem: Element;
    /// The library's tensor type.
    type Tensor: Send + Sync;
    /// Short name for reports.
    const NAME: &'static str;
    /// Element order of the slices (see [`TensorOps::STORAGE_ORDER`]).
    const STORAGE_ORDER: StorageOrder = StorageOrder::RowMajor;
    /// Fuse per-tensor projection's reductions with the update, tensor by tensor (default
    /// `true`; see [`TensorOps::FUSE_PER_TENSOR`]).
    const FUSE_PER_TENSOR: bool = true;
    /// Shape (row-major dimensions).
    fn shape(t: &Self::Tensor) -> Vec<usize>;
    /// Whether `t` has this shape. Called for every tensor at every step: override it so it
    /// does not allocate (the default compares against [`shape`](Self::shape)).
    fn has_shape(t: &Self::Tensor, shape: &[usize]) -> bool {
        Self::shape(t) == shape
    }
    /// Zero-filled tensor of the same shape.
    fn zeros_like(t: &Self::Tensor) -> Self::Tensor;
    /// Elements in storage order, or [`BackendError::NotContiguous`].
    fn as_slice(t: &Self::Tensor) -> Result<&[Self::Elem], BackendError>;
    /// Mutable elements in storage order, or [`BackendError::NotContiguous`].
    fn as_mut_slice(t: &mut Self::Tensor) -> Result<&mut [Self::Elem], BackendError>;
}

/// A plain host tensor: row-major elements with their shape. The tensor type of [`VecBackend`],
/// for frameworks whose own tensors cannot be borrowed as slices (copy in and out of these) and
/// for tests.
#[derive(Clone, Debug, PartialEq)]
pub struct VecTensor<E> {
    /// Row-major elements (`shape.iter().product()` of them).
    pub data: Vec<E>,
    /// Row-major dimensions (empty for a scalar).
    pub shape: Vec<usize>,
}

impl<E> VecTensor<E> {
    /// A tensor from its shape and row-major data, or `None` if their sizes differ.
    pub fn new(shape: &[usize], data: Vec<E>) -> Option<Self> {
        (shape.iter().product::<usize>() == data.len()).then(|| VecTensor { data, shape: shape.to_vec() })
    }
}

impl<E: Element> VecTensor<E> {
    /// A tensor of this shape from `f64` values (each rounded once to `E`), or `None` if their
    /// sizes differ.
    pub fn from_f64(shape: &[usize], data: &[f64]) -> Option<Self> {
        Self::new(shape, data.iter().map(|&x| E::from_f64(x)).collect())
    }

    /// The values widened to `f64`.
    pub fn to_f64(&self) -> Vec<f64> {
        self.data.iter().map(|x| x.as_f64()).collect()
    }
}

/// The built-in host backend over [`VecTensor`]s.
pub struct VecBackend<E>(std::marker::PhantomData<E>);

impl<E> std::fmt::Debug for VecBackend<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VecBackend")
    }
}

impl<E: Element> HostBackend for VecBackend<E> {
    type Elem = E;
    type Tensor = VecTensor<E>;
    const NAME: &'static str = "vec";

    fn shape(t: &VecTensor<E>) -> Vec<usize> {
        t.shape.clone()
    }
    fn has_shape(t: &VecTensor<E>, shape: &[usize]) -> bool {
        t.shape == shape
    }
    fn zeros_like(t: &VecTensor<E>) -> VecTensor<E> {
        VecTensor { data: vec![E::from_f64(0.0); t.data.len()], shape: t.shape.clone() }
    }
    fn as_slice(t: &VecTensor<E>) -> Result<&[E], BackendError> {
        Ok(&t.data)
    }
    fn as_mut_slice(t: &mut VecTensor<E>) -> Result<&mut [E], BackendError> {
        Ok(&mut t.data)
    }
}

fn len_err() -> BackendError {
    BackendError::Device("tensor lengths differ".into())
}

/// The host slices of a tensor's delta at a main call.
fn delta_slices<'a, H: HostBackend>(
    d: DeltaView<'a, H::Tensor>,
) -> Result<DeltaSlices<'a, H::Elem>, BackendError> {
    Ok(match d {
        DeltaView::None => DeltaSlices::None,
        DeltaView::Stored(t) => DeltaSlices::Stored(H::as_slice(t)?),
        DeltaView::Realized { param, anchor } => {
            DeltaSlices::Realized { param: H::as_slice(param)?, anchor: H::as_slice(anchor)? }
        }
    })
}

impl<H: HostBackend> TensorOps for H {
    type Elem = H::Elem;
    type Tensor = H::Tensor;
    const NAME: &'static str = H::NAME;
    const FUSE_PER_TENSOR: bool = H::FUSE_PER_TENSOR;
    const STORAGE_ORDER: StorageOrder = H::STORAGE_ORDER;

    fn shape(t: &Self::Tensor) -> Vec<usize> {
        H::shape(t)
    }
    fn has_shape(t: &Self::Tensor, shape: &[usize]) -> bool {
        H::has_shape(t, shape)
    }
    fn numel(t: &Self::Tensor) -> usize {
        H::as_slice(t).map(|s| s.len()).unwrap_or_else(|_| H::shape(t).iter().product())
    }
    fn validate(t: &Self::Tensor) -> Result<(), BackendError> {
        H::as_slice(t).map(|_| ())
    }
    fn zeros_like(t: &Self::Tensor) -> Result<Self::Tensor, BackendError> {
        Ok(H::zeros_like(t))
    }
    fn read(t: &Self::Tensor, out: &mut [Self::Elem]) -> Result<(), BackendError> {
        let s = H::as_slice(t)?;
        if s.len() != out.len() {
            return Err(len_err());
        }
        out.copy_from_slice(s);
        Ok(())
    }
    fn write(t: &mut Self::Tensor, src: &[Self::Elem]) -> Result<(), BackendError> {
        let d = H::as_mut_slice(t)?;
        if d.len() != src.len() {
            return Err(len_err());
        }
        d.copy_from_slice(src);
        Ok(())
    }
    fn reduce(delta: DeltaView<'_, Self::Tensor>, grad: &Self::Tensor) -> Result<Reduction, BackendError> {
        let g = H::as_slice(grad)?;
        let d = delta_slices::<H>(delta)?;
        if !d.fits(g.len()) {
            return Err(len_err());
        }
        Ok(reduce_slices(d, g))
    }
    fn apply(
        kernel: &Kernel<Self::Elem>,
        param: &mut Self::Tensor,
        grad: &Self::Tensor,
        state: &mut TensorState<Self::Tensor>,
    ) -> Result<(), BackendError> {
        apply_host::<H>(kernel, param, grad, state)
    }

    #[cfg(feature = "rayon")]
    fn reduce_all(
        batch: &mut Batch<'_, '_, Self::Tensor, Self::Elem>,
        with_delta: bool,
    ) -> Result<(), BackendError> {
        use rayon::prelude::*;
        batch.clear_out();
        batch.par_items().try_for_each(|it| {
            let delta = if with_delta { it.state.delta_view(&*it.param) } else { DeltaView::None };
            *it.out = Self::reduce(delta, it.grad)?;
            Ok(())
        })
    }

    #[cfg(feature = "rayon")]
    fn apply_all(batch: &mut Batch<'_, '_, Self::Tensor, Self::Elem>) -> Result<(), BackendError> {
        use rayon::prelude::*;
        batch.par_items().try_for_each(|it| apply_host::<H>(it.kernel, it.param, it.grad, it.state))
    }

    #[cfg(feature = "rayon")]
    fn reduce_apply_all(
        batch: &mut Batch<'_, '_, Self::Tensor, Self::Elem>,
        coef: &(dyn Fn(Reduction, &mut Kernel<Self::Elem>) + Sync),
    ) -> Result<(), BackendError> {
        use rayon::prelude::*;
        batch.clear_out();
        batch.par_items().try_for_each(|it| {
            // Reduce, then apply while the tensor's delta and gradient are in cache.
            *it.out = Self::reduce(it.state.delta_view(&*it.param), it.grad)?;
            coef(*it.out, it.kernel);
            apply_host::<H>(it.kernel, it.param, it.grad, it.state)
        })
    }
}

fn apply_host<H: HostBackend>(
    k: &Kernel<H::Elem>,
    param: &mut H::Tensor,
    grad: &H::Tensor,
    state: &mut TensorState<H::Tensor>,
) -> Result<(), BackendError> {
    let v = state.check(k)?;
    let p = H::as_mut_slice(param)?;
    let g = H::as_slice(grad)?;
    let TensorState { anchor, delta, ref_slots, main_slots } = state;
    let d: &mut [H::Elem] = match delta {
        Some(d) if v.reads_delta() || v.writes_delta() => H::as_mut_slice(d)?,
        _ => &mut [],
    };
    let a: &mut [H::Elem] = match anchor {
        Some(a) if v.reads_anchor() || v.writes_anchor() => H::as_mut_slice(a)?,
        _ => &mut [],
    };
    let slots = match k.pass {
        crate::backend::Pass::Reference { .. } => ref_slots,
        _ => main_slots,
    };
    let used = k.rule.slots();
    let mut it = slots.iter_mut().take(used);
    let mut next = || -> Result<&mut [H::Elem], BackendError> {
        match it.next() {
            Some(t) => H::as_mut_slice(t),
            None => Ok(&mut []),
        }
    };
    let s = [next()?, next()?, next()?];
    let lanes = Lanes { p, g, d, a, s };
    lanes.check(v, used)?;
    run(k, v, lanes);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Variant;
    #[cfg(target_arch = "x86_64")]
    use crate::cpu::simd;
    use crate::optim::{Adam, AdamW, InnerConfig, RmsProp, Sgd};

    /// Values in [-1, 1) from a 64-bit LCG.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((x >> 40) as f32) / ((1u64 << 23) as f32) - 1.0
            })
            .collect()
    }

    fn configs() -> Vec<InnerConfig> {
        let sgd = |momentum, dampening, nesterov| {
            InnerConfig::Sgd(Sgd {
                lr: 0.1,
                momentum,
                dampening,
                nesterov,
                weight_decay: 0.01,
                maximize: false,
            })
        };
        let rms = |momentum, centered| {
            InnerConfig::RmsProp(RmsProp { momentum, centered, weight_decay: 0.01, ..Default::default() })
        };
        vec![
            sgd(0.0, 0.0, false),
            sgd(0.9, 0.1, false),
            sgd(0.9, 0.0, true),
            InnerConfig::Adam(Adam { weight_decay: 0.01, ..Default::default() }),
            InnerConfig::Adam(Adam { amsgrad: true, betas: (0.2, 0.9), ..Default::default() }),
            InnerConfig::AdamW(AdamW::default()),
            rms(0.0, false),
            rms(0.0, true),
            rms(0.9, false),
            rms(0.9, true),
        ]
    }

    /// Run one pass over fresh copies of the inputs; return every array afterwards.
    fn pass_result(k: &Kernel<f32>, v: Variant, n: usize) -> Vec<Vec<f32>> {
        let mut p = values(n, 1);
        let g = values(n, 2);
        let mut d: Vec<f32> = values(n, 3).iter().map(|x| x * 1e-2).collect();
        let mut a = values(n, 4);
        // State slots: non-negative where they are second moments.
        let mut s: Vec<Vec<f32>> =
            (0..3).map(|i| values(n, 5 + i).iter().map(|x| x.abs()).collect()).collect();
        let used = k.rule.slots();
        {
            let [s0, s1, s2] = &mut s[..] else { unreachable!() };
            fn cut(v: &mut [f32], on: bool) -> &mut [f32] {
                if on {
                    v
                } else {
                    &mut v[..0]
                }
            }
            let s = [cut(s0, used > 0), cut(s1, used > 1), cut(s2, used > 2)];
            let lanes = Lanes { p: &mut p, g: &g, d: &mut d, a: &mut a, s };
            lanes.check(v, used).expect("lengths");
            run(k, v, lanes);
        }
        let mut out = vec![p, d, a];
        out.extend(s);
        out
    }

    fn bits(v: &[Vec<f32>]) -> Vec<Vec<u32>> {
        v.iter().map(|x| x.iter().map(|y| y.to_bits()).collect()).collect()
    }

    /// The AVX2 loops and the baseline loops give bitwise identical results for every rule and
    /// variant, on lengths that exercise the vector remainders and the parallel split; so do
    /// the reductions, for every kind of delta.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn simd_and_baseline_agree_bitwise() {
        if !simd::force(true) {
            eprintln!("no AVX2 on this CPU: nothing to compare");
            simd::force(false);
            return;
        }
        for n in [1usize, 7, 13, 1000, PAR_MIN + 5] {
            // The first step (SGD momentum's buffer initialisation) on small sizes only: debug
            // builds are slow.
            let steps: &[u64] = if n > 1000 { &[5] } else { &[1, 5] };
            for c in configs() {
                for &step in steps {
                    for v in Variant::ALL {
                        let k = Kernel {
                            pass: crate::backend::Pass::Plain,
                            rule: c.rule::<f32>(step, c.lr(), 0.01),
                            grad_scale: 0.5,
                            proj: -0.25,
                            delta_scale: 4.0,
                        };
                        simd::force(false);
                        let base = pass_result(&k, v, n);
                        simd::force(true);
                        let wide = pass_result(&k, v, n);
                        assert!(bits(&base) == bits(&wide), "{c:?} {v:?} n={n} step={step}");
                    }
                }
            }
            let (d, g) = (values(n, 9), values(n, 10));
            let p: Vec<f32> = values(n, 11).iter().map(|x| 1.0 + x).collect();
            let a: Vec<f32> = p.iter().zip(&d).map(|(p, d)| p - d * 1e-3).collect();
            for dd in [
                DeltaSlices::Stored(&d[..]),
                DeltaSlices::None,
                DeltaSlices::Realized { param: &p, anchor: &a },
            ] {
                simd::force(false);
                let base = reduce_slices(dd, &g);
                simd::force(true);
                let wide = reduce_slices(dd, &g);
                let generic = crate::cpu::reduce::tests::tree_generic(dd, &g);
                assert_eq!(base, wide, "n={n}");
                assert_eq!(base, generic, "n={n}");
            }
        }
    }

    /// The realized main step forms `theta - anchor` in f32, projects with it and steps from
    /// the anchor: the same as materializing that delta and running the stored-delta step.
    #[test]
    fn realized_main_equals_materialized_delta() {
        let n = 1000;
        let c = InnerConfig::Adam(Adam::default());
        let k = Kernel {
            pass: crate::backend::Pass::Main,
            rule: c.rule::<f32>(3, 1e-3, 0.0),
            grad_scale: 1.0,
            proj: -0.5,
            delta_scale: 2.0,
        };
        let run_one = |v: Variant, d: &mut Vec<f32>, p: &mut Vec<f32>, a: &mut Vec<f32>| {
            let g = values(n, 2);
            let mut s: Vec<Vec<f32>> =
                (0..3).map(|i| values(n, 5 + i).iter().map(|x| x.abs()).collect()).collect();
            let [s0, s1, s2] = &mut s[..] else { unreachable!() };
            let lanes = Lanes { p, g: &g, d, a, s: [s0, s1, &mut s2[..0]] };
            lanes.check(v, 2).expect("lengths");
            run(&k, v, lanes);
            s
        };
        let a0: Vec<f32> = values(n, 4).iter().map(|x| 1.0 + x).collect();
        let p0: Vec<f32> = a0.iter().zip(values(n, 3)).map(|(a, u)| a + 1e-6 * u).collect();
        let (mut p1, mut a1, mut none) = (p0.clone(), a0.clone(), vec![]);
        let s1 = run_one(Variant::MainRealized, &mut none, &mut p1, &mut a1);
        let mut d: Vec<f32> = p0.iter().zip(&a0).map(|(p, a)| p - a).collect();
        let (mut p2, mut a2) = (p0.clone(), a0.clone());
        let s2 = run_one(Variant::MainAnchor, &mut d, &mut p2, &mut a2);
        assert_eq!(bits(&[p1, a1]), bits(&[p2, a2]));
        assert_eq!(bits(&s1), bits(&s2));
    }
}
