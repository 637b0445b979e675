//! Max-min fair division of the batch class budget between batch publications
//! ("water filling"): every claimant gets the same share, except those that want less,
//! which get what they want; what they leave is shared by the others.
//!
//! A claimant's want is its demand estimate, already bounded by its hard ceiling, so a
//! volume held by a ceiling never takes budget it cannot use.

/// Splits `budget` between claimants wanting `wants` (`f64::INFINITY`: as much as it can
/// get). Returns one share per claimant, in order. The shares sum to `budget` when the
/// wants add up to more, and to the wants otherwise. Negative or NaN wants count as 0,
/// a negative or NaN budget as 0.
pub fn water_fill(budget: f64, wants: &[f64]) -> Vec<f64> {
    let mut shares = vec![0.0; wants.len()];
    let wants: Vec<f64> = wants
        .iter()
        .map(|w| if w.is_nan() { 0.0 } else { w.max(0.0) })
        .collect();
    let mut order: Vec<usize> = (0..wants.len()).collect();
    order.sort_by(|a, b| wants[*a].total_cmp(&wants[*b]));
    let mut remaining = if budget.is_nan() {
        0.0
    } else {
        budget.max(0.0)
    };
    let mut left = order.len();
    for i in order {
        let fair = remaining / left as f64;
        let share = wants[i].min(fair);
        shares[i] = share;
        remaining -= share;
        left -= 1;
    }
    shares
}

/// [`quantize`] rotates leftover units only while some volume has fewer whole units.
pub const ROTATE_BELOW_UNITS: f64 = 4.0;

/// Quantizes per-volume shares of one direction so that each volume's IOPS limit is a
/// whole number of `unit` IOPS (blk-throttle's granularity: it counts IOs per 100 ms
/// slice, and a limit that is not a whole number of IOs per slice loses the fraction each
/// time it trims a slice: at 5 IOPS a group gets 2.5-3.3; at 18, about 10), keeping the
/// class total at the nearest whole number of units to the exact total.
///
/// `shares` are fractions of a device that does `iops` in this direction. Every volume
/// gets the whole units of its share; the units left over from the fractions go to the
/// volumes with the largest fractions, ties (equal shares) in an order that starts at
/// `rotation` (modulo the count) while some volume has fewer than
/// [`ROTATE_BELOW_UNITS`] whole units, so a caller that advances `rotation` now and then
/// spreads them fairly over time where one unit is a large part of a volume's limit. A volume left with no unit gets `min_iops` (the
/// smallest valid cap) instead of its share, when that is less. `unit <= 0` returns the
/// shares unchanged.
pub fn quantize(shares: &[f64], iops: f64, unit: f64, min_iops: f64, rotation: usize) -> Vec<f64> {
    let n = shares.len();
    if !(unit > 0.0 && iops > 0.0) || n == 0 {
        return shares.to_vec();
    }
    let exact: Vec<f64> = shares.iter().map(|s| s.max(0.0) * iops / unit).collect();
    let mut units: Vec<f64> = exact.iter().map(|u| u.floor()).collect();
    let total = exact.iter().sum::<f64>().round();
    let mut extra = (total - units.iter().sum::<f64>()).max(0.0) as usize;
    // Fractions compared at a resolution coarser than float noise, so equal shares tie.
    let frac = |i: usize| ((exact[i] - units[i]) * 1e6).round() as i64;
    // Rotating matters while a unit is a large part of a volume's limit (a quarter or
    // more); above that the leftover units stay put, so steady shares give steady limits.
    let smallest = units.iter().copied().fold(f64::INFINITY, f64::min);
    let rot = if smallest < ROTATE_BELOW_UNITS {
        rotation % n
    } else {
        0
    };
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|a, b| {
        frac(*b)
            .cmp(&frac(*a))
            .then(((a + n - rot) % n).cmp(&((b + n - rot) % n)))
    });
    for i in order {
        if extra == 0 {
            break;
        }
        units[i] += 1.0;
        extra -= 1;
    }
    units
        .iter()
        .zip(shares)
        .map(|(u, s)| {
            if *u > 0.0 {
                u * unit / iops
            } else {
                s.max(0.0).min(min_iops / iops)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_gives_whole_units_keeps_the_total_and_rotates_the_remainder() {
        let iops = |q: &[f64]| {
            q.iter()
                .map(|s| (s * 400.0 * 1e6).round() / 1e6)
                .collect::<Vec<_>>()
        };
        // 0.05 of a 400-IOPS device split four ways: 5 IOPS each is 2 units of 10 in
        // all: two volumes get 10, the others the minimum cap; which two rotates.
        let floor = [0.0125; 4];
        assert_eq!(
            iops(&quantize(&floor, 400.0, 10.0, 2.0, 0)),
            [10.0, 10.0, 2.0, 2.0]
        );
        assert_eq!(
            iops(&quantize(&floor, 400.0, 10.0, 2.0, 1)),
            [2.0, 10.0, 10.0, 2.0]
        );
        assert_eq!(
            iops(&quantize(&floor, 400.0, 10.0, 2.0, 6)),
            [2.0, 2.0, 10.0, 10.0]
        );
        // 1500 IOPS: 18.75 each is 7.5 units: 8 in all, 20 + 20 + 20 + 20.
        let q = quantize(&[0.0125; 4], 1500.0, 10.0, 2.0, 0);
        let got: Vec<f64> = q.iter().map(|s| (s * 1500.0).round()).collect();
        assert_eq!(got, [20.0, 20.0, 20.0, 20.0]);
        // Largest fraction first: 14 (0.4) and 27 (0.7) of a 41 total: 10 + 30.
        let q = quantize(&[14.0 / 1000.0, 27.0 / 1000.0], 1000.0, 10.0, 2.0, 0);
        let got: Vec<f64> = q.iter().map(|s| (s * 1000.0).round()).collect();
        assert_eq!(got, [10.0, 30.0]);
        // A tiny share stays tiny (never raised to the minimum); unit 0 is a no-op.
        let q = quantize(&[0.001, 0.5], 1000.0, 10.0, 2.0, 0);
        assert_eq!(iops(&q)[0], 0.4);
        assert_eq!(quantize(&floor, 400.0, 0.0, 2.0, 3), floor);
        assert!(quantize(&[], 400.0, 10.0, 2.0, 0).is_empty());
        // Four units or more each: the leftover stays put whatever the rotation.
        let big = [0.03125; 4]; // 31.25 IOPS of 1000 each: 3 units and a quarter
        let a = quantize(&big, 1000.0, 10.0, 2.0, 1);
        assert_ne!(a, quantize(&big, 1000.0, 10.0, 2.0, 0));
        let big = [0.05125; 4]; // 51.25 each: 5 units and a quarter
        assert_eq!(
            quantize(&big, 1000.0, 10.0, 2.0, 1),
            quantize(&big, 1000.0, 10.0, 2.0, 0)
        );
    }

    const INF: f64 = f64::INFINITY;

    #[test]
    fn table() {
        // (budget, wants, shares)
        let table: &[(f64, &[f64], &[f64])] = &[
            (1.0, &[], &[]),
            (1.0, &[INF], &[1.0]),
            (1.0, &[INF, INF, INF, INF], &[0.25, 0.25, 0.25, 0.25]),
            // One wants less than the fair share: the others split the rest.
            (1.0, &[0.1, INF, INF], &[0.1, 0.45, 0.45]),
            // Wants below the budget: everyone gets its want, the rest is left.
            (1.0, &[0.1, 0.2], &[0.1, 0.2]),
            // A want exactly at the fair share.
            (0.9, &[0.3, INF, INF], &[0.3, 0.3, 0.3]),
            // Nested: 0.05 < 1/4, then 0.3 < 0.95/3, then the two others split 0.65.
            (1.0, &[INF, 0.3, 0.05, INF], &[0.325, 0.3, 0.05, 0.325]),
            (0.0, &[INF, 1.0], &[0.0, 0.0]),
            (-1.0, &[INF], &[0.0]),
            (1.0, &[f64::NAN, -2.0, INF], &[0.0, 0.0, 1.0]),
        ];
        for (budget, wants, want) in table {
            let got = water_fill(*budget, wants);
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(want.iter()) {
                assert!(
                    (g - w).abs() < 1e-9,
                    "budget {budget} wants {wants:?}: {got:?} != {want:?}"
                );
            }
        }
    }

    #[test]
    fn never_exceeds_the_budget_nor_a_want() {
        // A deterministic spread of wants and budgets.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 1000) as f64 / 1000.0
        };
        for _ in 0..500 {
            let n = (next() * 12.0) as usize;
            let wants: Vec<f64> = (0..n)
                .map(|_| if next() < 0.2 { INF } else { next() })
                .collect();
            let budget = next() * 2.0;
            let shares = water_fill(budget, &wants);
            let sum: f64 = shares.iter().sum();
            assert!(sum <= budget + 1e-9, "{wants:?} {budget}: {sum}");
            for (s, w) in shares.iter().zip(&wants) {
                assert!(*s <= *w + 1e-12 && *s >= 0.0);
            }
            let want_sum: f64 = wants.iter().sum();
            let expect = budget.min(want_sum);
            assert!(
                (sum - expect).abs() < 1e-9,
                "{wants:?} {budget}: {sum} != {expect}"
            );
            // Max-min: anyone short of its want has at least everyone else's share.
            let top = shares.iter().cloned().fold(0.0, f64::max);
            for (s, w) in shares.iter().zip(&wants) {
                if *s < *w - 1e-9 {
                    assert!(*s >= top - 1e-9, "{wants:?} {budget}: {shares:?}");
                }
            }
        }
    }
}
