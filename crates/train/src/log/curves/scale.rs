//! Axis scales: the range a panel's values span, padded so no axis collapses, and tick labels
//! with just the digits their spacing needs.

/// The smallest and largest of the finite values, if there are any.
pub(super) fn span(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

/// `[lo, hi]` widened by `frac` of its width on each side; a zero-width range (a single point,
/// a constant series) gets a width around its value, so the axis never collapses.
pub(super) fn padded(lo: f64, hi: f64, frac: f64) -> (f64, f64) {
    let width = hi - lo;
    if width > 0.0 && width.is_finite() {
        return (lo - width * frac, hi + width * frac);
    }
    let pad = if lo != 0.0 { lo.abs() * 0.05 } else { 1.0 };
    (lo - pad, hi + pad)
}

/// A tick label with as many digits as ticks `span` apart (about ten of them) need: SI
/// suffixes for large values (`1.5M`), scientific notation for tiny ones (learning rates).
pub(super) fn tick_label(v: f64, span: f64) -> String {
    if v == 0.0 || v.abs() < span * 1e-9 {
        return "0".into();
    }
    let magnitude = v.abs().max(span.abs());
    if magnitude < 1e-2 {
        return format!("{v:.1e}");
    }
    let (scale, suffix) = si_scale(magnitude);
    let decimals = step_decimals(span / scale / 10.0);
    format!("{:.*}{suffix}", decimals, v / scale)
}

/// The divisor and suffix for labels of this magnitude. From 10,000 to 999,999 the label is
/// in thousands (`150k`); smaller values are written out.
fn si_scale(magnitude: f64) -> (f64, &'static str) {
    [
        (1e12, 1e12, "T"),
        (1e9, 1e9, "G"),
        (1e6, 1e6, "M"),
        (1e4, 1e3, "k"),
    ]
    .into_iter()
    .find(|(from, _, _)| magnitude >= *from)
    .map_or((1.0, ""), |(_, scale, suffix)| (scale, suffix))
}

/// The decimals a tick step of at least `raw` (a tenth of the span, in label units) needs.
/// plotters puts at most 8 ticks a round step (1, 2 or 5 × 10^k) apart, so the step is at
/// least the round number just above `raw`; its decimals are enough.
fn step_decimals(raw: f64) -> usize {
    if raw >= 1.0 || raw <= 0.0 || !raw.is_finite() {
        return 0;
    }
    let base = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0]
        .into_iter()
        .map(|m| m * base)
        .find(|n| *n >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * base);
    (-(step.log10() + 1e-9).floor()).clamp(0.0, 6.0) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_fit_their_scale() {
        assert_eq!(tick_label(0.0, 10.0), "0");
        assert_eq!(tick_label(150.0, 300.0), "150");
        assert_eq!(tick_label(4.5, 3.0), "4.5");
        assert_eq!(tick_label(5e-4, 5e-4), "5.0e-4");
        assert_eq!(tick_label(150_000.0, 300_000.0), "150k");
        assert_eq!(tick_label(1_500_000.0, 3_000_000.0), "1.5M");
        assert_eq!(tick_label(40_000.0, 4_000.0), "40.0k");
        assert_eq!(tick_label(41_000.0, 7_400.0), "41k");
        assert_eq!(tick_label(5.5, 3.9), "5.5");
        assert_eq!(tick_label(0.4, 1.5), "0.4");
    }

    #[test]
    fn a_single_value_still_spans_an_axis() {
        assert_eq!(padded(3.0, 3.0, 0.1), (2.85, 3.15));
        assert_eq!(padded(0.0, 0.0, 0.1), (-1.0, 1.0));
    }
}
