//! A log-bucketed latency histogram: 32 linear sub-buckets per power of two, so any
//! recorded value is reported within 1/32 (about 3 %) of itself, over the whole `u64`
//! range, in 1920 counters (15 KiB). Values below 64 are exact.

/// log2 of the sub-buckets per power of two.
const SUB_BITS: u32 = 5;
const SUB: usize = 1 << SUB_BITS;
/// Buckets for every `u64`: 32 exact ones, then 32 per power of two from 2^5 to 2^63.
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB;

/// Counts of values (nanoseconds, for the load generator) in log-linear buckets, with the
/// exact count, sum, minimum and maximum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Histogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    /// Records one value.
    pub fn record(&mut self, value: u64) {
        self.counts[bucket(value)] += 1;
        self.total += 1;
        self.sum += u128::from(value);
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    /// Adds every value recorded in `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.total += other.total;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The largest value recorded (exact), if any.
    pub fn max(&self) -> Option<u64> {
        (self.total > 0).then_some(self.max)
    }

    /// The smallest value recorded (exact), if any.
    pub fn min(&self) -> Option<u64> {
        (self.total > 0).then_some(self.min)
    }

    /// The mean, rounded down, if any value was recorded.
    pub fn mean(&self) -> Option<u64> {
        let mean = self.sum.checked_div(u128::from(self.total))?;
        Some(u64::try_from(mean).unwrap_or(u64::MAX))
    }

    /// The value at percentile `pct` (0..=100): the upper edge of the bucket holding the
    /// `ceil(pct/100 * count)`-th smallest value, capped at the exact maximum. So
    /// percentiles never decrease with `pct`, never exceed [`max`](Self::max), and are at
    /// most 1/32 above the true value. `None` when empty.
    pub fn percentile(&self, pct: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let pct = pct.clamp(0.0, 100.0);
        // A rank in 1..=total (the float cast saturates; the clamp fixes the ends).
        let rank = ((pct / 100.0) * self.total as f64).ceil() as u64;
        let rank = rank.clamp(1, self.total);
        let mut seen = 0;
        for (index, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(upper(index).min(self.max));
            }
        }
        Some(self.max)
    }
}

/// The bucket of `value`.
fn bucket(value: u64) -> usize {
    if value < SUB as u64 {
        return value as usize;
    }
    let msb = 63 - value.leading_zeros();
    let shift = msb - SUB_BITS;
    let mantissa = ((value >> shift) as usize) & (SUB - 1);
    (shift as usize + 1) * SUB + mantissa
}

/// The smallest value in bucket `index`.
fn lower(index: usize) -> u64 {
    if index < SUB {
        return index as u64;
    }
    let shift = index / SUB - 1;
    let mantissa = (index % SUB) as u64;
    (SUB as u64 + mantissa) << shift
}

/// The largest value in bucket `index`.
fn upper(index: usize) -> u64 {
    if index < SUB {
        return index as u64;
    }
    let shift = index / SUB - 1;
    lower(index) + ((1u64 << shift) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_u64_contiguously() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(63), 63);
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        assert_eq!(upper(BUCKETS - 1), u64::MAX);
        for index in 0..BUCKETS - 1 {
            assert_eq!(
                upper(index) + 1,
                lower(index + 1),
                "gap after bucket {index}"
            );
            assert_eq!(bucket(lower(index)), index);
            assert_eq!(bucket(upper(index)), index);
        }
    }

    #[test]
    fn bucket_width_is_within_one_thirty_second() {
        for index in SUB..BUCKETS {
            let width = upper(index) - lower(index) + 1;
            assert!(width * 32 <= lower(index), "bucket {index} too wide");
        }
    }

    #[test]
    fn percentiles_of_a_uniform_range() {
        let mut h = Histogram::new();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        assert_eq!(h.count(), 10_000);
        assert_eq!(h.min(), Some(1000));
        assert_eq!(h.max(), Some(10_000_000));
        assert_eq!(h.mean(), Some(5_000_500));
        for (pct, truth) in [(50.0, 5_000_000u64), (99.0, 9_900_000), (99.9, 9_990_000)] {
            let got = h.percentile(pct).unwrap();
            assert!(
                got >= truth && got <= truth + truth / 32,
                "p{pct}: {got} vs {truth}"
            );
        }
        assert_eq!(h.percentile(100.0), Some(10_000_000));
        assert_eq!(h.percentile(0.0), h.percentile(0.001));
    }

    #[test]
    fn percentiles_are_ordered_and_capped_by_max() {
        let mut h = Histogram::new();
        for v in [5, 70, 70, 1_000_001, 3] {
            h.record(v);
        }
        let p50 = h.percentile(50.0).unwrap();
        let p99 = h.percentile(99.0).unwrap();
        assert!(p50 <= p99 && p99 <= h.max().unwrap());
        assert_eq!(p99, 1_000_001);
        assert_eq!(p50, 71); // the bucket [70, 71] holds 70
    }

    #[test]
    fn empty_and_merge() {
        let mut a = Histogram::new();
        assert_eq!(a.percentile(50.0), None);
        assert_eq!(a.mean(), None);
        assert_eq!(a.max(), None);
        let mut b = Histogram::new();
        b.record(10);
        b.record(30);
        a.merge(&b);
        a.merge(&Histogram::new());
        assert_eq!(a.count(), 2);
        assert_eq!(a.min(), Some(10));
        assert_eq!(a.max(), Some(30));
        assert_eq!(a.mean(), Some(20));
    }
}
