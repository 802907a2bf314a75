//! # profit-digits
//!
//! The UCI handwritten digits (8x8 images, 1,797 of them; provenance in `data/README.md`), the
//! fixed train/test split and the two new tasks that `profit digits` and the candle and burn
//! examples fine-tune on: one copy of the data and its preparation for all of them.
//!
//! ```
//! let all = profit_digits::embedded().unwrap();
//! let (train, test) = profit_digits::split(&all);
//! assert_eq!((train.len(), test.len()), (1258, 539));
//! let new_task = train.proximal();
//! assert_eq!(new_task.y, train.y);
//! ```

use flate2::read::GzDecoder;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The data, gzip-compressed CSV: 64 pixels (0..16) then the label, one image per line.
pub static DIGITS_GZ: &[u8] = include_bytes!("../data/digits.csv.gz");

/// Pixels per image (8 x 8).
pub const PIXELS: usize = 64;
/// Classes (the digits 0 to 9).
pub const CLASSES: usize = 10;
/// The proximal task's rotation, in degrees.
pub const PROXIMAL_DEGREES: f64 = 15.0;
/// The split's shuffle seed.
pub const SPLIT_SEED: u64 = 12345;
/// Share of the images in the training set.
pub const TRAIN_FRACTION: f64 = 0.7;

/// Images scaled to [0, 1] (row-major `[n, 64]`) and their labels.
#[derive(Clone, Debug)]
pub struct Set {
    /// Pixels, `PIXELS` per image.
    pub x: Vec<f32>,
    /// Labels, `0..CLASSES`.
    pub y: Vec<usize>,
}

impl Set {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// The images at `ids`, in that order.
    pub fn take(&self, ids: &[usize]) -> Set {
        Set {
            x: ids.iter().flat_map(|&i| self.x[i * PIXELS..(i + 1) * PIXELS].iter().copied()).collect(),
            y: ids.iter().map(|&i| self.y[i]).collect(),
        }
    }

    /// The proximal task: each image rotated by `PROXIMAL_DEGREES` and moved one pixel right.
    pub fn proximal(&self) -> Set {
        self.rotated_shifted(PROXIMAL_DEGREES, 1.0)
    }

    /// Each image rotated by `degrees` (counter-clockwise) about its centre and moved `dx`
    /// pixels to the right, sampled bilinearly (outside the image: 0).
    pub fn rotated_shifted(&self, degrees: f64, dx: f64) -> Set {
        let (sin, cos) = degrees.to_radians().sin_cos();
        let c = 3.5;
        let mut x = vec![0.0f32; self.x.len()];
        for (dst, src) in x.chunks_mut(PIXELS).zip(self.x.chunks(PIXELS)) {
            let at = |r: isize, col: isize| -> f64 {
                if (0..8).contains(&r) && (0..8).contains(&col) {
                    src[r as usize * 8 + col as usize] as f64
                } else {
                    0.0
                }
            };
            for r in 0..8 {
                for col in 0..8 {
                    // Output pixel (r, col) takes the source at the inverse transform.
                    let (u, v) = (col as f64 - c - dx, r as f64 - c);
                    let (sc, sr) = (cos * u - sin * v + c, sin * u + cos * v + c);
                    let (c0, r0) = (sc.floor(), sr.floor());
                    let (fc, fr) = (sc - c0, sr - r0);
                    let (c0, r0) = (c0 as isize, r0 as isize);
                    let v = (1.0 - fr) * ((1.0 - fc) * at(r0, c0) + fc * at(r0, c0 + 1))
                        + fr * ((1.0 - fc) * at(r0 + 1, c0) + fc * at(r0 + 1, c0 + 1));
                    dst[r * 8 + col] = v as f32;
                }
            }
        }
        Set { x, y: self.y.clone() }
    }

    /// Rows and columns of each image swapped.
    pub fn transposed(&self) -> Set {
        let mut x = self.x.clone();
        for (dst, src) in x.chunks_mut(PIXELS).zip(self.x.chunks(PIXELS)) {
            for r in 0..8 {
                for c in 0..8 {
                    dst[r * 8 + c] = src[c * 8 + r];
                }
            }
        }
        Set { x, y: self.y.clone() }
    }
}

/// The embedded data, parsed.
pub fn embedded() -> Result<Set, String> {
    parse(DIGITS_GZ)
}

/// Parse the gzip-compressed CSV (see [`DIGITS_GZ`]).
pub fn parse(gz: &[u8]) -> Result<Set, String> {
    use std::io::Read;
    let mut text = String::new();
    GzDecoder::new(gz).read_to_string(&mut text).map_err(|e| format!("digits data: {e}"))?;
    let mut set = Set { x: vec![], y: vec![] };
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let vals: Vec<f32> = line
            .split(',')
            .map(|v| v.trim().parse::<f32>())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("digits data line {}: {e}", i + 1))?;
        if vals.len() != PIXELS + 1 {
            return Err(format!("digits data line {}: {} values, expected 65", i + 1, vals.len()));
        }
        let label = vals[PIXELS];
        if !(label >= 0.0 && label < CLASSES as f32 && label.fract() == 0.0) {
            return Err(format!("digits data line {}: label {label}", i + 1));
        }
        set.x.extend(vals[..PIXELS].iter().map(|v| v / 16.0));
        set.y.push(label as usize);
    }
    if set.len() < 20 {
        return Err(format!("digits data: only {} rows", set.len()));
    }
    Ok(set)
}

/// The fixed split: one shuffle (seed [`SPLIT_SEED`]), the first [`TRAIN_FRACTION`] for
/// training, the rest for testing.
pub fn split(all: &Set) -> (Set, Set) {
    let mut idx: Vec<usize> = (0..all.len()).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(SPLIT_SEED));
    let n_train = (all.len() as f64 * TRAIN_FRACTION).round() as usize;
    (all.take(&idx[..n_train]), all.take(&idx[n_train..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(text: &str) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(text.as_bytes()).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn embedded_data_parses_and_splits() {
        let all = parse(DIGITS_GZ).unwrap();
        assert_eq!(all.len(), 1797);
        assert!(all.x.iter().all(|v| (0.0..=1.0).contains(v)));
        let (train, test) = split(&all);
        assert_eq!(train.len() + test.len(), 1797);
        assert_eq!(train.len(), 1258);
    }

    #[test]
    fn transpose_swaps_rows_and_columns() {
        let x: Vec<f32> = (0..64).map(|i| i as f32).collect();
        let t = Set { x, y: vec![3] }.transposed();
        assert_eq!(t.x[1], 8.0);
        assert_eq!(t.x[8], 1.0);
        assert_eq!(t.transposed().x, (0..64).map(|i| i as f32).collect::<Vec<_>>());
    }

    #[test]
    fn proximal_rotation_is_small_and_exact_at_zero() {
        let all = parse(DIGITS_GZ).unwrap();
        let few = Set { x: all.x[..64 * 20].to_vec(), y: all.y[..20].to_vec() };
        // No rotation, no shift: the identity.
        let same = few.rotated_shifted(0.0, 0.0);
        assert!(same.x.iter().zip(&few.x).all(|(a, b)| (a - b).abs() < 1e-6));
        // A shift by one pixel moves column c to c + 1.
        let moved = few.rotated_shifted(0.0, 1.0);
        assert_eq!(moved.x[3 * 8 + 5], few.x[3 * 8 + 4]);
        assert_eq!(moved.x[3 * 8], 0.0);
        // The proximal images stay close to the originals (closer than the transposed ones).
        let dist = |a: &Set| a.x.iter().zip(&few.x).map(|(p, q)| (p - q).powi(2)).sum::<f32>();
        let prox = few.proximal();
        assert!(
            dist(&prox) > 0.0 && dist(&prox) < dist(&few.transposed()),
            "{} vs {}",
            dist(&prox),
            dist(&few.transposed())
        );
        assert!(prox.x.iter().all(|v| (0.0..=1.0 + 1e-6).contains(v)));
    }

    #[test]
    fn malformed_data_is_an_error() {
        let row = |label: &str| format!("{}{label}\n", "0,".repeat(64));
        assert!(parse(b"not gzip").is_err());
        assert!(parse(&gz("1,2,3\n")).is_err());
        assert!(parse(&gz(&row("12").repeat(30))).unwrap_err().contains("label"));
        assert!(parse(&gz(&row("x").repeat(30))).is_err());
        assert_eq!(parse(&gz(&row("7").repeat(30))).unwrap().len(), 30);
    }
}
