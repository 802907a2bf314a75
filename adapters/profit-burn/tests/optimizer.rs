//! `BurnProfit` as a burn user sees it: parameter paths, frozen parameters, typed errors that
//! change nothing, burn-style `step(lr, module, grads)`, checkpoints resumed mid-cycle.

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use profit_burn::{BurnProfit, BurnProfitError, StepFailure};
use profit_core::{Adam, LoadOptions, Phase, ProfitConfig, ProfitError, SaveOptions, Sgd};

#[derive(Module, Debug)]
struct Net {
    a: Linear,
    b: Linear,
}

impl Net {
    fn new(device: &Device) -> Self {
        Net { a: LinearConfig::new(3, 5).init(device), b: LinearConfig::new(5, 2).init(device) }
    }
    fn loss(&self, step: usize, device: &Device) -> Tensor<1> {
        let v: Vec<f32> = (0..12).map(|i| (i as f32 * (0.1 + step as f32 * 0.01)).sin()).collect();
        let x = Tensor::<2>::from_data(TensorData::new(v, [4, 3]), device);
        let h = burn::tensor::activation::relu(self.a.forward(x));
        self.b.forward(h).powi_scalar(2).mean()
    }
    fn grads(&self, step: usize, device: &Device) -> GradientsParams {
        GradientsParams::from_grads(self.loss(step, device).backward(), self)
    }
}

fn config() -> ProfitConfig {
    ProfitConfig {
        n_ref: 2,
        ..ProfitConfig::new(
            Sgd { lr: 1e-3, momentum: 0.9, ..Default::default() },
            Adam { lr: 1e-2, ..Default::default() },
        )
    }
}

fn bits<const D: usize>(p: &Param<Tensor<D>>) -> Vec<u32> {
    p.val().into_data().as_slice::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()
}

fn snapshot(m: &Net) -> Vec<Vec<u32>> {
    let (a, b) = (&m.a, &m.b);
    vec![bits(&a.weight), bits(a.bias.as_ref().unwrap()), bits(&b.weight), bits(b.bias.as_ref().unwrap())]
}

#[test]
fn names_are_module_paths_and_frozen_parameters_stay_out() {
    let device = Device::default().autodiff();
    device.seed(1);
    let mut model = Net::new(&device);
    let opt = BurnProfit::new(&model, config()).unwrap();
    assert_eq!(opt.names(), ["a.weight", "a.bias", "b.weight", "b.bias"]);
    model.a = model.a.no_grad();
    let mut opt = BurnProfit::new(&model, config()).unwrap();
    assert_eq!(opt.names(), ["b.weight", "b.bias"]);
    let frozen = snapshot(&model)[..2].to_vec();
    for step in 0..5 {
        let grads = model.grads(step, &device);
        model = opt.try_step(model, &grads).map_err(|f| f.error).unwrap().0;
    }
    assert_eq!(snapshot(&model)[..2], frozen[..]);
    assert_eq!(opt.calls(), 5);
}

#[test]
fn burn_style_step_sets_the_rate_and_keeps_the_parameters_trainable() {
    let device = Device::default().autodiff();
    device.seed(2);
    let mut model = Net::new(&device);
    let ids = (model.a.weight.id, model.b.weight.id);
    let mut opt = BurnProfit::new(&model, config()).unwrap();
    let before = snapshot(&model);
    for step in 0..6 {
        let grads = model.grads(step, &device);
        model = opt.step(5e-3, model, grads);
        assert!(opt.last_error().is_none());
    }
    assert_ne!(snapshot(&model), before);
    assert_eq!((model.a.weight.id, model.b.weight.id), ids);
    assert!(model.a.weight.val().is_require_grad());
    assert_eq!(opt.lr(), 5e-3);
    assert!((opt.ref_lr() - 5e-4).abs() < 1e-18, "fixed ratio: {}", opt.ref_lr());
    // An invalid rate: the module comes back unchanged, the error is kept.
    let s = snapshot(&model);
    let grads = model.grads(6, &device);
    model = opt.step(-1.0, model, grads);
    assert!(matches!(
        opt.last_error(),
        Some(BurnProfitError::Profit(ProfitError::InvalidHyperparameter { .. }))
    ));
    assert_eq!(snapshot(&model), s);
    assert_eq!(opt.calls(), 6);
}

#[test]
fn checkpoint_resumes_mid_cycle_bitwise() {
    let device = Device::default().autodiff();
    device.seed(3);
    let mut model = Net::new(&device);
    let mut opt = BurnProfit::new(&model, config()).unwrap();
    for step in 0..4 {
        let grads = model.grads(step, &device);
        model = opt.try_step(model, &grads).map_err(|f| f.error).unwrap().0;
    }
    // Call 4 is the second reference call of the second cycle (n_ref = 2): mid-cycle.
    let bytes = opt.save_checkpoint(&model, SaveOptions::default()).unwrap();
    let twin = model.clone();
    let mut resumed = BurnProfit::new(&twin, config()).unwrap();
    let mut twin =
        resumed.load_checkpoint(&bytes, twin, LoadOptions::default()).map_err(|f| f.error).unwrap();
    assert_eq!(resumed.calls(), 4);
    let mut wrong = BurnProfit::new(&twin, ProfitConfig::default()).unwrap();
    let back = wrong.load_checkpoint(&bytes, twin, LoadOptions::default()).expect_err("another state layout");
    twin = back.module;
    // Other weights (a fresh initialisation): the state belongs to the saved ones.
    let other = Net::new(&device);
    let fresh = snapshot(&other);
    let mut elsewhere = BurnProfit::new(&other, config()).unwrap();
    let back = elsewhere.load_checkpoint(&bytes, other, LoadOptions::default()).expect_err("other weights");
    assert!(matches!(back.error, BurnProfitError::Profit(ProfitError::Checkpoint(_))), "{:?}", back.error);
    assert_eq!(snapshot(&back.module), fresh);
    assert_eq!(elsewhere.calls(), 0);
    // A file with the parameters restores them too.
    let whole = opt.save_checkpoint(&model, SaveOptions::with_params()).unwrap();
    let restored =
        elsewhere.load_checkpoint(&whole, back.module, LoadOptions::default()).map_err(|f| f.error).unwrap();
    assert_eq!(snapshot(&restored), snapshot(&model));
    assert_eq!(elsewhere.calls(), 4);
    for step in 4..10 {
        let (g1, g2) = (model.grads(step, &device), twin.grads(step, &device));
        let (m, r1) = opt.try_step(model, &g1).map_err(|f| f.error).unwrap();
        let (t, r2) = resumed.try_step(twin, &g2).map_err(|f| f.error).unwrap();
        (model, twin) = (m, t);
        assert_eq!(r1, r2);
        assert_eq!(snapshot(&model), snapshot(&twin));
    }
    assert_eq!(
        opt.save_checkpoint(&model, SaveOptions::default()).unwrap(),
        resumed.save_checkpoint(&twin, SaveOptions::default()).unwrap()
    );
}

#[test]
fn bad_gradients_are_typed_and_change_nothing() {
    let device = Device::default().autodiff();
    device.seed(4);
    let mut model = Net::new(&device);
    let mut opt = BurnProfit::new(&model, config()).unwrap();
    let grads = model.grads(0, &device);
    model = opt.try_step(model, &grads).map_err(|f| f.error).unwrap().0;
    let before = snapshot(&model);
    let state = opt.save_checkpoint(&model, SaveOptions::default()).unwrap();
    let inner = device.clone().inner();

    // Only the first layer takes part: `b` has no gradient.
    let x = Tensor::<2>::ones([2, 3], &device);
    let grads = GradientsParams::from_grads(model.a.forward(x).sum().backward(), &model);
    let cases: Vec<(GradientsParams, &str)> = {
        let full = |f: &dyn Fn(&mut GradientsParams)| {
            let mut g = model.grads(1, &device);
            f(&mut g);
            g
        };
        let id = model.b.weight.id;
        vec![
            (grads, "missing"),
            (full(&|g| g.register::<2>(id, Tensor::ones([3, 3], &inner))), "shape"),
            (
                full(&|g| {
                    g.register::<2>(
                        id,
                        Tensor::from_data(TensorData::new(vec![f32::NAN; 10], [5, 2]), &inner),
                    )
                }),
                "nan",
            ),
        ]
    };
    for (grads, what) in cases {
        let StepFailure { module, error } = opt.try_step(model, &grads).expect_err(what);
        model = module;
        match (what, &error) {
            ("missing", BurnProfitError::MissingGradient { name }) => assert_eq!(name, "b.weight"),
            ("shape", BurnProfitError::GradientMismatch { name, .. }) => assert_eq!(name, "b.weight"),
            ("nan", BurnProfitError::Profit(ProfitError::NonFiniteGradient { name })) => {
                assert_eq!(name, "b.weight")
            }
            _ => panic!("{what}: unexpected {error:?}"),
        }
        assert_eq!(snapshot(&model), before, "{what}");
        assert_eq!(opt.calls(), 1);
        assert_eq!(opt.save_checkpoint(&model, SaveOptions::default()).unwrap(), state);
    }
    let grads = model.grads(1, &device);
    assert_eq!(opt.try_step(model, &grads).map_err(|f| f.error).unwrap().1.phase, Phase::Reference);
}

#[test]
fn a_module_without_trainable_parameters_is_refused() {
    let device = Device::default().autodiff();
    let model = Net::new(&device).no_grad();
    assert_eq!(BurnProfit::new(&model, config()).err(), Some(BurnProfitError::NoParameters));
    let model = Net::new(&device);
    let bad = ProfitConfig { n_ref: 0, ..config() };
    assert!(matches!(BurnProfit::new(&model, bad), Err(BurnProfitError::Profit(_))));
}
