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

#[cfg(test)]
mod tests {
    use super::*;

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
