//! Lock-free weighted choice: cumulative weights built once per table, a thread-local random
//! number per request.

/// Cumulative weights over a pool's backends (index-aligned; weight 0 = not eligible).
#[derive(Debug, Clone, Default)]
pub struct WeightedSet {
    /// (cumulative upper bound, backend index), only for weight > 0.
    cumulative: Box<[(u64, usize)]>,
    total: u64,
}

impl WeightedSet {
    pub fn new(weights: impl IntoIterator<Item = u32>) -> Self {
        let mut total = 0u64;
        let mut cumulative = Vec::new();
        for (i, w) in weights.into_iter().enumerate() {
            if w > 0 {
                total += u64::from(w);
                cumulative.push((total, i));
            }
        }
        WeightedSet {
            cumulative: cumulative.into_boxed_slice(),
            total,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Choose an index with probability weight/sum, skipping indexes whose bit is set in
    /// `tried` (indexes >= 64 are never skipped).
    pub fn choose(&self, tried: u64) -> Option<usize> {
        if tried == 0 {
            if self.total == 0 {
                return None;
            }
            // Few instances per process: a linear scan beats a binary search here.
            let point = fastrand::u64(0..self.total);
            return self
                .cumulative
                .iter()
                .find(|(c, _)| point < *c)
                .map(|&(_, i)| i);
        }
        let skip = |i: usize| i < 64 && tried & (1u64 << i) != 0;
        let mut remaining = 0u64;
        let mut prev = 0u64;
        for &(c, i) in self.cumulative.iter() {
            if !skip(i) {
                remaining += c - prev;
            }
            prev = c;
        }
        if remaining == 0 {
            return None;
        }
        // Walk the non-skipped entries with a point in 0..remaining.
        let mut point = fastrand::u64(0..remaining);
        let mut prev = 0u64;
        for &(c, i) in self.cumulative.iter() {
            let w = c - prev;
            prev = c;
            if skip(i) {
                continue;
            }
            if point < w {
                return Some(i);
            }
            point -= w;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(weights: &[u32], n: usize) -> Vec<f64> {
        let set = WeightedSet::new(weights.iter().copied());
        let mut counts = vec![0usize; weights.len()];
        for _ in 0..n {
            if let Some(i) = set.choose(0) {
                counts[i] += 1;
            }
        }
        counts
            .iter()
            .map(|c| *c as f64 * 100.0 / n as f64)
            .collect()
    }

    #[test]
    fn shares_within_two_points_over_10000() {
        for weights in [
            &[50u32, 50][..],
            &[10, 90],
            &[100, 100, 0],
            &[1, 2, 3, 4],
            &[100],
        ] {
            let sum: u32 = weights.iter().sum();
            let got = shares(weights, 10_000);
            for (w, s) in weights.iter().zip(got) {
                let want = f64::from(*w) * 100.0 / f64::from(sum);
                assert!(
                    (s - want).abs() <= 2.0,
                    "weights {weights:?}: share {s} want {want}"
                );
            }
        }
    }

    #[test]
    fn zero_weights_are_never_chosen() {
        let set = WeightedSet::new([0, 0]);
        assert!(set.is_empty());
        assert_eq!(set.choose(0), None);
        let set = WeightedSet::new([0, 5, 0]);
        for _ in 0..100 {
            assert_eq!(set.choose(0), Some(1));
        }
    }

    #[test]
    fn retries_skip_tried_indexes() {
        let set = WeightedSet::new([10, 10, 10]);
        for _ in 0..200 {
            let i = set.choose(0b001).unwrap_or(9);
            assert!(i == 1 || i == 2);
        }
        assert_eq!(set.choose(0b011), Some(2));
        assert_eq!(set.choose(0b111), None);
    }
}
