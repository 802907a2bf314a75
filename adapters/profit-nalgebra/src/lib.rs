//! # profit-nalgebra
//!
//! Two backends for nalgebra, `f32` or `f64`:
//! - [`Nalgebra<E>`]: tensors are `DMatrix<E>` (a bias is a one-column matrix);
//! - [`NalgebraVector<E>`]: tensors are `DVector<E>`.
//!
//! Shapes are `[nrows, ncols]` (`[len]` for vectors). Elements are handed to the kernels in
//! nalgebra's storage order (column-major); [`TensorOps::read`](profit_core::backend::TensorOps::read)
//! and `write` use that order too, and checkpoints record it: they load into nalgebra
//! optimizers, and are refused by row-major backends (ndarray, dfdx, CUDA).
//!
//! ```
//! use nalgebra::DMatrix;
//! use profit_core::{Profit, ProfitConfig, RmsProp, Sgd};
//! use profit_nalgebra::Nalgebra;
//!
//! let mut w = DMatrix::<f64>::from_element(2, 2, 1.0);
//! let config = ProfitConfig::new(Sgd { lr: 1e-4, ..Default::default() }, RmsProp::default());
//! let mut opt = Profit::<Nalgebra<f64>>::new(config, &[&w]).unwrap();
//! opt.step(&mut [&mut w], &[&DMatrix::from_element(2, 2, 0.1)]).unwrap();
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

use std::marker::PhantomData;

use nalgebra::{DMatrix, DVector};
use profit_core::backend::StorageOrder;
use profit_core::element::Element;
use profit_core::error::BackendError;
use profit_core::host::HostBackend;

/// The nalgebra matrix backend marker: tensors are `DMatrix<E>`.
#[derive(Debug)]
pub struct Nalgebra<E>(PhantomData<E>);

/// The nalgebra vector backend marker: tensors are `DVector<E>`.
#[derive(Debug)]
pub struct NalgebraVector<E>(PhantomData<E>);

impl<E: Element + nalgebra::Scalar> HostBackend for Nalgebra<E> {
    type Elem = E;
    type Tensor = DMatrix<E>;
    const NAME: &'static str = "nalgebra";
    const STORAGE_ORDER: StorageOrder = StorageOrder::ColumnMajor;

    fn shape(t: &DMatrix<E>) -> Vec<usize> {
        vec![t.nrows(), t.ncols()]
    }
    fn has_shape(t: &DMatrix<E>, shape: &[usize]) -> bool {
        shape == [t.nrows(), t.ncols()]
    }
    fn zeros_like(t: &DMatrix<E>) -> DMatrix<E> {
        DMatrix::from_element(t.nrows(), t.ncols(), E::default())
    }
    fn as_slice(t: &DMatrix<E>) -> Result<&[E], BackendError> {
        Ok(t.as_slice())
    }
    fn as_mut_slice(t: &mut DMatrix<E>) -> Result<&mut [E], BackendError> {
        Ok(t.as_mut_slice())
    }
}

impl<E: Element + nalgebra::Scalar> HostBackend for NalgebraVector<E> {
    type Elem = E;
    type Tensor = DVector<E>;
    const NAME: &'static str = "nalgebra-vector";

    fn shape(t: &DVector<E>) -> Vec<usize> {
        vec![t.len()]
    }
    fn has_shape(t: &DVector<E>, shape: &[usize]) -> bool {
        shape == [t.len()]
    }
    fn zeros_like(t: &DVector<E>) -> DVector<E> {
        DVector::from_element(t.len(), E::default())
    }
    fn as_slice(t: &DVector<E>) -> Result<&[E], BackendError> {
        Ok(t.as_slice())
    }
    fn as_mut_slice(t: &mut DVector<E>) -> Result<&mut [E], BackendError> {
        Ok(t.as_mut_slice())
    }
}
