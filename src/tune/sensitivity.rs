//! Output distances for the sensitivity passes and the ranking built on them.

use std::cmp::Ordering;

/// Relative L2 distance `||y - y0|| / ||y0||` of calibration outputs, in f64.
///
/// Infinite when `y` has a non-finite value where `y0` is finite (an
/// overflow) or when the lengths differ; a `y0` of all zeros compares
/// absolutely.
pub fn relative_l2(y: &[f32], y0: &[f32]) -> f64 {
    if y.len() != y0.len() {
        return f64::INFINITY;
    }
    let mut num = 0.0f64;
    let mut den = 0.0f64;
    for (&a, &b) in y.iter().zip(y0) {
        let (a, b) = (a as f64, b as f64);
        if !a.is_finite() {
            if a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()) {
                continue;
            }
            return f64::INFINITY;
        }
        if !b.is_finite() {
            continue;
        }
        num += (a - b) * (a - b);
        den += b * b;
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

/// Indices sorted most sensitive first; ties (and NaN) by position, so the
/// order is deterministic.
pub fn rank(sensitivity: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..sensitivity.len()).collect();
    order.sort_by(|&a, &b| {
        let (sa, sb) = (key(sensitivity[a]), key(sensitivity[b]));
        sb.partial_cmp(&sa)
            .unwrap_or(Ordering::Equal)
            .then(a.cmp(&b))
    });
    order
}

fn key(s: f64) -> f64 {
    if s.is_nan() { f64::INFINITY } else { s }
}

/// Where the ranked sensitivities drop the most (on a log scale): the count
/// `k` such that the top `k` stand out from the rest by at least a factor
/// `min_ratio`. `None` when no such gap exists.
pub fn largest_gap(sorted_desc: &[f64], min_ratio: f64) -> Option<usize> {
    const FLOOR: f64 = 1e-30;
    let mut best: Option<(usize, f64)> = None;
    for k in 1..sorted_desc.len() {
        let hi = key(sorted_desc[k - 1]).max(FLOOR);
        let lo = key(sorted_desc[k]).max(FLOOR);
        let ratio = if hi.is_infinite() {
            if lo.is_infinite() { 1.0 } else { f64::MAX }
        } else {
            hi / lo
        };
        if ratio >= min_ratio && best.is_none_or(|(_, r)| ratio > r) {
            best = Some((k, ratio));
        }
    }
    best.map(|(k, _)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_l2_basics() {
        assert_eq!(relative_l2(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        let d = relative_l2(&[3.0, 4.0], &[0.0, 0.0]);
        assert!((d - 5.0).abs() < 1e-12);
        let d = relative_l2(&[1.1, 0.0], &[1.0, 0.0]);
        assert!((d - 0.1).abs() < 1e-6);
        assert!(relative_l2(&[f32::INFINITY], &[1.0]).is_infinite());
        assert!(relative_l2(&[f32::NAN], &[1.0]).is_infinite());
        assert!(relative_l2(&[1.0], &[1.0, 2.0]).is_infinite());
    }

    #[test]
    fn rank_is_descending_and_stable() {
        assert_eq!(rank(&[0.1, 5.0, 0.1, f64::NAN]), vec![3, 1, 0, 2]);
    }

    #[test]
    fn gap_finds_the_outlier() {
        assert_eq!(largest_gap(&[10.0, 0.01, 0.009, 0.008], 4.0), Some(1));
        assert_eq!(largest_gap(&[1.0, 0.9, 0.8], 4.0), None);
        assert_eq!(
            largest_gap(&[f64::INFINITY, f64::INFINITY, 0.1], 4.0),
            Some(2)
        );
    }
}
