//! Human-readable numbers for terminal output.

/// 271527168 -> "271,527,168".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// 1.97e9 -> "1.97 G".
pub fn si(x: f64) -> String {
    let units = [(1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")];
    units
        .iter()
        .find(|(scale, _)| x.abs() >= *scale)
        .map_or_else(
            || format!("{x:.2} "),
            |(scale, unit)| format!("{:.2} {unit}", x / scale),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(271_527_168), "271,527,168");
        assert_eq!(si(1.97e9), "1.97 G");
        assert_eq!(si(12.0), "12.00 ");
    }
}
