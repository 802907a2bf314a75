//! # profit-ndarray
//!
//! [`NdArray<E>`] runs PROFIT (and the plain inner optimizers) on `ndarray::ArrayD<E>` for
//! `E = f32` or `f64`. Arrays must be in standard (row-major, contiguous) layout; any other
//! layout is refused with `BackendError::NotContiguous` before anything changes. Views convert
//! with `.to_owned().into_dyn()`; arrays of fixed dimension with `.into_dyn()`.
//!
//! ```
//! use ndarray::{ArrayD, IxDyn};
//! use profit_core::{Adam, Profit, ProfitConfig, Sgd};
//! use profit_ndarray::NdArray;
//!
//! let mut w = ArrayD::<f32>::ones(IxDyn(&[3, 2]));
//! let config = ProfitConfig::new(Sgd { lr: 1e-4, ..Default::default() }, Adam { lr: 1e-3, ..Default::default() });
//! let mut opt = Profit::<NdArray<f32>>::with_names(config, &[("w", &w)]).unwrap();
//! let g = ArrayD::<f32>::from_elem(IxDyn(&[3, 2]), 0.5);
//! opt.step(&mut [&mut w], &[&g]).unwrap();
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

use std::marker::PhantomData;

use ndarray::ArrayD;
use profit_core::element::Element;
use profit_core::error::BackendError;
use profit_core::host::HostBackend;

/// The ndarray backend marker: tensors are `ArrayD<E>`.
#[derive(Debug)]
pub struct NdArray<E>(PhantomData<E>);

impl<E: Element> HostBackend for NdArray<E> {
    type Elem = E;
    type Tensor = ArrayD<E>;
    const NAME: &'static str = "ndarray";

    fn shape(t: &ArrayD<E>) -> Vec<usize> {
        t.shape().to_vec()
    }
    fn has_shape(t: &ArrayD<E>, shape: &[usize]) -> bool {
        t.shape() == shape
    }
    fn zeros_like(t: &ArrayD<E>) -> ArrayD<E> {
        ArrayD::from_elem(t.raw_dim(), E::default())
    }
    fn as_slice(t: &ArrayD<E>) -> Result<&[E], BackendError> {
        t.as_slice().ok_or(BackendError::NotContiguous)
    }
    fn as_mut_slice(t: &mut ArrayD<E>) -> Result<&mut [E], BackendError> {
        t.as_slice_mut().ok_or(BackendError::NotContiguous)
    }
}
