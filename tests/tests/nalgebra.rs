//! The conformance suite on the nalgebra backend (`DMatrix`), f64 and f32. Vectors are
//! one-column matrices; values are exchanged row-major.

use nalgebra::DMatrix;
use profit_conformance::{conformance_suite, Harness};
use profit_core::element::Element;
use profit_nalgebra::Nalgebra;

struct Na<E>(std::marker::PhantomData<E>);

impl<E: Element + nalgebra::Scalar> Harness for Na<E> {
    type B = Nalgebra<E>;
    fn label(&self) -> String {
        format!("nalgebra-{}", E::DTYPE)
    }
    fn tensor(&self, shape: &[usize], data: &[f64]) -> DMatrix<E> {
        let (r, c) = match shape {
            [r, c] => (*r, *c),
            [n] => (*n, 1),
            _ => panic!("nalgebra harness takes 1-D or 2-D shapes"),
        };
        let v: Vec<E> = data.iter().map(|&x| E::from_f64(x)).collect();
        DMatrix::from_row_slice(r, c, &v)
    }
    fn values(&self, t: &DMatrix<E>) -> Vec<f64> {
        (0..t.nrows()).flat_map(|i| (0..t.ncols()).map(move |j| t[(i, j)].as_f64())).collect()
    }
}

conformance_suite!(nalgebra_f64, || Ok::<_, String>(Na::<f64>(Default::default())));
conformance_suite!(nalgebra_f32, || Ok::<_, String>(Na::<f32>(Default::default())));

/// Sharding on nalgebra: rank optimizers over one-column shards equal the `VecBackend` engine.
#[test]
fn sharded_nalgebra_ranks_equal_the_vec_engine() {
    profit_conformance::sharded::ranks_on_backend(&Na::<f32>(Default::default()));
    profit_conformance::sharded::ranks_on_backend(&Na::<f64>(Default::default()));
}
