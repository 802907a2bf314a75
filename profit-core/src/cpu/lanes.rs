//! The lane layout shared by the portable and the vector reduction leaves.

/// Elements per lane group of a leaf.
pub(crate) const LANES: usize = 8;

/// Partial sums of one leaf, per lane: `[<d, g>, |d|^2, |g|^2]`, element `i` in lane `i % LANES`.
pub(crate) type LaneSums = [[f64; LANES]; 3];
