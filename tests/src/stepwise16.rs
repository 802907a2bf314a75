//! 16-bit replays of wider (float64 and float32) golden trajectories against a reference that
//! is valid for any trajectory.
//!
//! A bf16 or f16 run drifts away from a wider trajectory by design: every stored value is
//! rounded to 8 or 11 bits, and once a projection decision differs the two runs part for good.
//! So no fixed tolerance against the golden file bounds it. What the library promises in 16
//! bits (`ALGORITHM.md`, section 4) is local: every call widens the stored values to `f32`,
//! computes there and rounds each stored value once. That is checked call by call: before each
//! call the 16-bit optimizer's whole state (parameters, anchor, delta, both inner optimizers'
//! slots, counters) is widened exactly into an `f32` optimizer; both take the same call (the
//! golden problem's gradient at the 16-bit weights, rounded to 16 bits); the 16-bit result must
//! equal the `f32` result rounded to 16 bits, bitwise, in every stored value, with the same
//! phase and projection decision. (The realized delta, `theta' - anchor` rounded to the
//! element type, is handed to the reference as an accumulated delta holding that rounded
//! difference: `f32` would not round it.) The golden file contributes the problem, the configuration
//! and the batches; the distance from its trajectory is printed, not asserted.

use profit_core::backend::TensorOps;
use profit_core::element::Element;
use profit_core::host::{VecBackend, VecTensor};
use profit_core::state::{BufferKind, ProfitState, StateBuffer};
use profit_core::{Delta, Profit, ProfitConfig, StepReport};

use crate::golden::{param_error, GoldenCase};
use crate::Harness;

type T<H> = <<H as Harness>::B as TensorOps>::Tensor;
type E<H> = <<H as Harness>::B as TensorOps>::Elem;

/// What a stepwise replay saw.
#[derive(Clone, Debug, Default)]
pub struct Stepwise {
    /// Calls checked.
    pub calls: usize,
    /// Main calls at which the projection fired.
    pub projected: usize,
    /// Stored values compared (parameters and state buffers, over all calls).
    pub values: usize,
    /// The 16-bit run's worst distance from the golden trajectory (README metric; information).
    pub from_golden: f64,
}

/// Round an `f64` to the element type and widen it back (exact).
fn round<E: Element>(x: f64) -> f64 {
    E::from_f64(x).as_f64()
}

fn same_bits(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

fn reports_agree(a: &StepReport, b: &StepReport) -> bool {
    a.phase == b.phase && a.main.map(|m| m.projected) == b.main.map(|m| m.projected)
}

/// The state of `opt` widened exactly into `f32` tensors.
fn widened<H: Harness>(h: &H, opt: &Profit<H::B>) -> Result<ProfitState<VecTensor<f32>>, String> {
    let s = opt.state().map_err(|e| e.to_string())?;
    let buffers = s
        .buffers
        .iter()
        .map(|b| {
            let shape = &s.meta.params[b.param].shape;
            let t = VecTensor::from_f64(shape, &h.values(b.tensor)).ok_or("buffer shape")?;
            Ok(StateBuffer { param: b.param, kind: b.kind, key: b.key.clone(), tensor: t })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(ProfitState { meta: s.meta.clone(), buffers })
}

/// Replay `case` in `delta` mode on a 16-bit harness, each call checked against the `f32`
/// reference (see the [module docs](self)). `Err` names the first call and value that differ.
pub fn replay<H: Harness>(h: &H, case: &GoldenCase, delta: Delta) -> Result<Stepwise, String> {
    let config = ProfitConfig { delta, ..case.profit_config()? };
    let params = &case.problem.params;
    let mut tensors: Vec<T<H>> = params.iter().map(|p| h.tensor(&p.shape, &p.init)).collect();
    let named: Vec<(&str, &T<H>)> = params.iter().map(|p| p.name.as_str()).zip(tensors.iter()).collect();
    let mut opt = Profit::<H::B>::with_names(config, &named).map_err(|e| e.to_string())?;
    let mut seen = Stepwise::default();
    for (call, (rows, rec)) in case.problem.batches.iter().zip(&case.trajectory).enumerate() {
        let at = |msg: String| format!("{} [{delta:?}] call {call}: {msg}", case.name);
        let current: Vec<Vec<f64>> = tensors.iter().map(|t| h.values(t)).collect();
        let (grads, _) = case.gradients(rows, &current);
        let gts: Vec<T<H>> = params.iter().zip(&grads).map(|(p, g)| h.tensor(&p.shape, g)).collect();

        // The reference: this moment's state, widened, one call in f32. The realized delta is
        // `theta' - anchor` rounded to the element type, which `f32` does not round: the
        // reference holds it as an accumulated delta instead (the same update otherwise).
        let mut state = widened(h, &opt).map_err(at)?;
        let mut ref_config = config;
        if delta == Delta::Realized {
            ref_config.delta = Delta::Accumulated;
            state.meta.config.delta = Delta::Accumulated;
            let anchors: Vec<(usize, Vec<f64>)> = state
                .buffers
                .iter()
                .filter(|b| b.kind == BufferKind::Anchor)
                .map(|b| (b.param, b.tensor.to_f64()))
                .collect();
            for (i, anchor) in anchors {
                let d: Vec<f64> = current[i].iter().zip(&anchor).map(|(p, a)| round::<E<H>>(p - a)).collect();
                let tensor =
                    VecTensor::from_f64(&params[i].shape, &d).ok_or("shape").map_err(|e| at(e.into()))?;
                let key = format!("{}/delta", params[i].name);
                state.buffers.push(StateBuffer { param: i, kind: BufferKind::Delta, key, tensor });
            }
        }
        let mut wide: Vec<VecTensor<f32>> = params
            .iter()
            .zip(&current)
            .map(|(p, v)| VecTensor::from_f64(&p.shape, v).expect("shape"))
            .collect();
        let wide_named: Vec<(&str, &VecTensor<f32>)> =
            params.iter().map(|p| p.name.as_str()).zip(wide.iter()).collect();
        let mut reference =
            Profit::<VecBackend<f32>>::with_names(ref_config, &wide_named).map_err(|e| at(e.to_string()))?;
        reference.load_state(&state, false).map_err(|e| at(format!("reference load: {e}")))?;
        let wide_grads: Vec<VecTensor<f32>> = params
            .iter()
            .zip(&gts)
            .map(|(p, g)| VecTensor::from_f64(&p.shape, &h.values(g)).expect("shape"))
            .collect();
        let expected =
            reference.step(&mut wide.iter_mut().collect::<Vec<_>>(), &wide_grads.iter().collect::<Vec<_>>());

        let got = opt.step(&mut tensors.iter_mut().collect::<Vec<_>>(), &gts.iter().collect::<Vec<_>>());
        let (got, expected) = match (got, expected) {
            (Ok(g), Ok(e)) => (g, e),
            (Err(g), Err(e)) if g.to_string() == e.to_string() => continue,
            (g, e) => return Err(at(format!("16-bit call gave {g:?}, the f32 reference {e:?}"))),
        };
        if !reports_agree(&got, &expected) {
            return Err(at(format!("16-bit report {got:?}, f32 reference {expected:?}")));
        }
        seen.calls += 1;
        seen.projected += got.main.is_some_and(|m| m.projected) as usize;
        // Every stored value: the parameters, then every state buffer.
        let mut pairs: Vec<(String, Vec<f64>, Vec<f64>)> = vec![];
        for ((p, t), w) in params.iter().zip(&tensors).zip(&wide) {
            pairs.push((format!("param {}", p.name), h.values(t), w.to_f64()));
        }
        let (mine, theirs) =
            (opt.state().map_err(|e| at(e.to_string()))?, reference.state().map_err(|e| at(e.to_string()))?);
        for a in &mine.buffers {
            let b =
                theirs.buffers.iter().find(|b| b.key == a.key).ok_or_else(|| at(format!("no {}", a.key)))?;
            pairs.push((a.key.clone(), h.values(a.tensor), b.tensor.to_f64()));
        }
        for (what, got, wide) in pairs {
            let elem = <E<H> as Element>::DTYPE;
            if let Some(i) = (0..got.len()).find(|&i| !same_bits(got[i], round::<E<H>>(wide[i]))) {
                return Err(at(format!(
                    "{what}[{i}] is {:e} in {elem}, the f32 reference {:e} rounds to {:e}",
                    got[i],
                    wide[i],
                    round::<E<H>>(wide[i])
                )));
            }
            seen.values += got.len();
        }
        for (p, t) in params.iter().zip(&tensors) {
            if let Some(exp) = rec.params.get(&p.name) {
                seen.from_golden = seen.from_golden.max(param_error(&h.values(t), exp));
            }
        }
    }
    Ok(seen)
}

/// [`replay`] for every float64 and float32 golden case in both delta modes; print a line per
/// replay; panic listing every failure, or if none ran.
pub fn replay_all<H: Harness>(h: &H) {
    let files = crate::golden::golden_files().unwrap_or_else(|e| panic!("{e}"));
    let (mut runs, mut failures) = (0, vec![]);
    for f in &files {
        let case = match GoldenCase::load(&f.path) {
            Ok(c) => c,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        if case.dtype16().is_some() {
            continue; // a 16-bit trajectory: replayed against itself (`golden16_all`)
        }
        for delta in [Delta::Realized, Delta::Accumulated] {
            runs += 1;
            match replay(h, &case, delta) {
                Ok(s) => println!(
                    "stepwise {:<28} {:<14} {:<11} {} calls ({} projected), {} stored values equal to the f32 reference; {:.3e} from the golden trajectory",
                    case.name,
                    h.label(),
                    crate::delta_name(delta),
                    s.calls,
                    s.projected,
                    s.values,
                    s.from_golden
                ),
                Err(e) => failures.push(e),
            }
        }
    }
    assert!(runs > 0, "no wide golden case for {}", h.label());
    assert!(failures.is_empty(), "{} failure(s) on {}:\n{}", failures.len(), h.label(), failures.join("\n"));
}
