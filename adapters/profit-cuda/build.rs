//! Compile `cuda-kernels/profit.cu` to PTX when `nvcc` is available; never fail for lack of CUDA.
//!
//! Writes `$OUT_DIR/profit_nvcc.ptx`: the freshly compiled PTX, or an empty file when no `nvcc`
//! was found (or it failed, or `PROFIT_CUDA_NO_NVCC` is set). The crate always embeds the
//! committed `cuda-kernels/ptx/profit.ptx` too and falls back to it at run time if the driver
//! refuses the fresh one (a newer local `nvcc` can emit a PTX ISA the driver does not know).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Flags shared with `cuda-kernels/build-ptx.sh`: no FMA contraction, IEEE division and sqrt.
const NVCC_FLAGS: &[&str] = &[
    "-ptx",
    "-arch=compute_80",
    "-std=c++17",
    "-fmad=false",
    "-prec-div=true",
    "-prec-sqrt=true",
    "-ftz=false",
];

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    // `kernels/` holds the crate's copies of the repository's `cuda-kernels/profit.cu` and
    // `cuda-kernels/ptx/profit.ptx` (links in the repository, files in the package).
    let kernels = manifest.join("kernels");
    let src = kernels.join("profit.cu");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-changed={}", kernels.join("profit.ptx").display());
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=PROFIT_CUDA_NO_NVCC");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("profit_nvcc.ptx");

    let fresh = match (env::var_os("PROFIT_CUDA_NO_NVCC"), find_nvcc()) {
        (None, Some(nvcc)) => compile(&nvcc, &src, &out),
        _ => None,
    };
    if fresh.is_none() {
        // Empty: the committed PTX is used.
        if let Err(e) = std::fs::write(&out, "") {
            println!("cargo:warning=profit-cuda: cannot write {}: {e}", out.display());
        }
    }
}

/// `nvcc` on `PATH`, else `$CUDA_HOME/bin/nvcc`.
fn find_nvcc() -> Option<PathBuf> {
    let exe = if cfg!(windows) { "nvcc.exe" } else { "nvcc" };
    let on_path = env::var_os("PATH")
        .into_iter()
        .flat_map(|p| env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(exe))
        .find(|p| p.is_file());
    on_path.or_else(|| {
        let p = PathBuf::from(env::var_os("CUDA_HOME")?).join("bin").join(exe);
        p.is_file().then_some(p)
    })
}

/// Compile to `out`; `None` (with a warning) when nvcc fails.
fn compile(nvcc: &Path, src: &Path, out: &Path) -> Option<()> {
    let res = Command::new(nvcc).args(NVCC_FLAGS).arg(src).arg("-o").arg(out).output();
    match res {
        Ok(o) if o.status.success() => Some(()),
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            println!("cargo:warning=profit-cuda: nvcc failed, using the committed PTX: {}", err.trim());
            None
        }
        Err(e) => {
            println!(
                "cargo:warning=profit-cuda: cannot run {}: {e}; using the committed PTX",
                nvcc.display()
            );
            None
        }
    }
}
