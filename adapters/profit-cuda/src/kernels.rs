//! The PTX this crate launches and the names of its entry points.
//!
//! The kernels' source is `cuda-kernels/profit.cu` at the repository root; its PTX
//! (`cuda-kernels/ptx/profit.ptx`, made by `cuda-kernels/build-ptx.sh` with the pinned CUDA 13.0
//! compiler for `compute_80`) is embedded in this crate. The crate carries both as
//! `kernels/profit.cu` and `kernels/profit.ptx` (links to those files in the repository,
//! copies in the published package). When `nvcc` was found at build time the
//! freshly compiled PTX is embedded too and tried first.

/// The committed PTX (`cuda-kernels/ptx/profit.ptx`).
pub const COMMITTED_PTX: &str = include_str!("../kernels/profit.ptx");

/// PTX compiled by `nvcc` at build time, or `""` when no `nvcc` was available.
pub const NVCC_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/profit_nvcc.ptx"));

/// Elements one apply block covers (`APPLY_CHUNK` in `profit.cu`).
pub const APPLY_CHUNK: u64 = 1024;
/// Threads per apply block.
pub const APPLY_THREADS: u32 = 256;
/// Elements one reduction block covers (`REDUCE_CHUNK` in `profit.cu`).
pub const REDUCE_CHUNK: u64 = 4096;
/// Threads per reduction block.
pub const REDUCE_THREADS: u32 = 256;
/// Elements per scalar set (`SC_STRIDE` in `profit.cu`).
pub const SC_STRIDE: usize = 12;
/// `u64` words per tensor descriptor (`struct Desc` in `profit.cu`).
pub const DESC_WORDS: usize = 11;
/// Threads of the one block that decides a call on the device (`REDUCE_THREADS`).
pub const DECIDE_THREADS: u32 = 256;

/// Element type names, in kernel-table order.
pub const DTYPES: [&str; 4] = ["f32", "f64", "bf16", "f16"];
/// Pass names, in kernel-table order: profit-core's [`Variant`](profit_core::backend::Variant) order
/// (`PLAIN .. MAIN_REALIZED` in `profit.cu`).
pub const PASSES: [&str; 8] = [
    "plain",
    "ref_first_anchor",
    "ref_first",
    "ref_acc",
    "main_anchor",
    "main_sub",
    "ref_anchor",
    "main_realized",
];
/// Rule names, in kernel-table order (`SGD .. RMSPROP` in `profit.cu`).
pub const RULES: [&str; 5] = ["sgd", "sgdm", "adam", "amsgrad", "rmsprop"];
/// The final (element-type independent) reduction kernel.
pub const REDUCE_FINAL: &str = "profit_reduce_final";
/// The decision kernels, by math type (`f32` for f32, bf16 and f16; `f64` for f64).
pub const DECIDE: [&str; 2] = ["profit_decide_f32", "profit_decide_f64"];

/// Name of the apply kernel for element type, pass and rule indices.
pub fn apply_entry(dtype: usize, pass: usize, rule: usize) -> String {
    format!("profit_apply_{}_{}_{}", DTYPES[dtype], PASSES[pass], RULES[rule])
}

/// Name of the first reduction kernel for an element type index.
pub fn reduce_partials_entry(dtype: usize) -> String {
    format!("profit_reduce_partials_{}", DTYPES[dtype])
}

/// Every entry point the Rust side loads, in load order.
pub fn entry_points() -> Vec<String> {
    let mut v = Vec::with_capacity(DTYPES.len() * (PASSES.len() * RULES.len() + 1) + 1 + DECIDE.len());
    for d in 0..DTYPES.len() {
        for p in 0..PASSES.len() {
            for r in 0..RULES.len() {
                v.push(apply_entry(d, p, r));
            }
        }
    }
    for d in 0..DTYPES.len() {
        v.push(reduce_partials_entry(d));
    }
    v.push(REDUCE_FINAL.to_string());
    v.extend(DECIDE.iter().map(|s| s.to_string()));
    v
}

/// The `.entry` names declared in a PTX text.
pub fn ptx_entries(ptx: &str) -> Vec<&str> {
    ptx.lines()
        .filter_map(|l| {
            let rest = l.trim_start().strip_prefix(".visible")?.trim_start().strip_prefix(".entry")?;
            let name = rest.trim_start().split(|c: char| c == '(' || c.is_whitespace()).next()?;
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

/// The PTX ISA version a PTX text declares (`.version 9.0` gives `(9, 0)`).
pub fn ptx_isa_version(ptx: &str) -> Option<(u32, u32)> {
    let v = ptx.lines().find_map(|l| l.trim().strip_prefix(".version"))?.trim();
    let (major, minor) = v.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries_and_version() {
        let ptx =
            ".version 9.0\n.target sm_80\n.visible .entry foo(\n\t.param .u64 a\n)\n.visible .entry bar()\n";
        assert_eq!(ptx_entries(ptx), vec!["foo", "bar"]);
        assert_eq!(ptx_isa_version(ptx), Some((9, 0)));
        assert_eq!(ptx_isa_version(".target sm_80"), None);
    }

    #[test]
    fn pass_names_follow_the_core_variants() {
        assert_eq!(PASSES.len(), profit_core::backend::Variant::ALL.len());
        for v in profit_core::backend::Variant::ALL {
            let name = format!("{v:?}");
            let snake: String = name
                .chars()
                .enumerate()
                .flat_map(|(i, c)| {
                    let lower = c.to_ascii_lowercase();
                    if c.is_ascii_uppercase() && i > 0 {
                        vec!['_', lower]
                    } else {
                        vec![lower]
                    }
                })
                .collect();
            assert_eq!(PASSES[v as usize], snake, "{v:?}");
        }
    }

    #[test]
    fn entry_names_are_distinct() {
        let mut names = entry_points();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n);
        // Apply kernels, one partials kernel per type, the final one, two decision kernels.
        assert_eq!(n, 4 * 8 * 5 + 4 + 1 + 2);
    }
}
