//! The host adapters against a given ndarray / nalgebra: a few PROFIT calls on each must match
//! profit-core's own `VecBackend` bitwise; profit-cuda against a given cudarc.

#[cfg(test)]
mod tests {
    use nalgebra::DMatrix;
    use ndarray::{ArrayD, IxDyn};
    use profit_core::host::{VecBackend, VecTensor};
    use profit_core::{Profit, ProfitConfig};
    use profit_nalgebra::Nalgebra;
    use profit_ndarray::NdArray;

    const R: usize = 3;
    const C: usize = 4;

    fn values(k: usize) -> Vec<f32> {
        (0..R * C).map(|i| ((i * 7 + k * 13) as f32 * 0.37).sin()).collect()
    }

    #[test]
    fn adapters_match_the_core() {
        let config = ProfitConfig::default();
        let mut v = VecTensor::new(&[R, C], values(0)).unwrap();
        let mut a = ArrayD::from_shape_vec(IxDyn(&[R, C]), values(0)).unwrap();
        // nalgebra is column-major: fill it so that its storage order holds the same values.
        let mut m = DMatrix::from_column_slice(R, C, &values(0));
        let mut ov = Profit::<VecBackend<f32>>::new(config, &[&v]).unwrap();
        let mut oa = Profit::<NdArray<f32>>::new(config, &[&a]).unwrap();
        let mut om = Profit::<Nalgebra<f32>>::new(config, &[&m]).unwrap();
        for k in 1..8 {
            let g = values(k);
            let rv = ov.step(&mut [&mut v], &[&VecTensor::new(&[R, C], g.clone()).unwrap()]).unwrap();
            let ra = oa
                .step(&mut [&mut a], &[&ArrayD::from_shape_vec(IxDyn(&[R, C]), g.clone()).unwrap()])
                .unwrap();
            let rm = om.step(&mut [&mut m], &[&DMatrix::from_column_slice(R, C, &g)]).unwrap();
            assert_eq!(rv, ra);
            assert_eq!(rv, rm);
            assert_eq!(v.data, a.as_slice().unwrap());
            assert_eq!(v.data, m.as_slice());
        }
        assert!(ov.main_steps() > 0);
    }

    /// profit-cuda builds against this cudarc; without a CUDA driver it says so with a typed
    /// error (with one, it opens the device).
    #[test]
    fn cuda_backend_builds_and_refuses_politely() {
        match profit_cuda::CudaBackend::new(0) {
            Ok(_) | Err(profit_core::error::BackendError::Unavailable(_)) => {}
            Err(e) => panic!("unexpected error without a GPU: {e}"),
        }
    }
}
