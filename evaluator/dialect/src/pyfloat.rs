//! Python's `repr(float)`, byte for byte: the dataset's numbers are written that way, so the
//! corpus we make and the code we rewrite must be too.

/// `repr(x)` as CPython 3 prints it: shortest round-trip digits, fixed notation for decimal
/// exponents in [-4, 16), otherwise `d.ddde-XX` with at least two exponent digits.
pub fn repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    // `{:e}` gives the shortest round-trip digits: "-1.2345e-7".
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').expect("`{:e}` always has an exponent");
    let exp: i32 = exp.parse().expect("`{:e}` exponent is an integer");
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        let body = if point <= 0 {
            format!("0.{}{}", "0".repeat((-point) as usize), digits)
        } else if point as usize >= digits.len() {
            format!("{}{}.0", digits, "0".repeat(point as usize - digits.len()))
        } else {
            let (int, frac) = digits.split_at(point as usize);
            format!("{int}.{frac}")
        };
        format!("{sign}{body}")
    } else {
        let exp_sign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mantissa}e{exp_sign}{:02}", exp.abs())
    }
}

/// Length of the unsigned float literal at `b[from..]` as Python reads it: digits, an optional
/// `.` with digits, and an exponent only when it has digits (`1e` stops before the `e`).
pub fn literal_len(b: &[u8], from: usize) -> usize {
    let digits = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        i
    };
    let mut i = digits(from);
    if i < b.len() && b[i] == b'.' {
        i = digits(i + 1);
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        let mut j = i + 1;
        if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
            j += 1;
        }
        let end = digits(j);
        if end > j {
            i = end;
        }
    }
    i - from
}

#[cfg(test)]
mod tests {
    use super::{literal_len, repr};

    #[test]
    fn literal_lengths_follow_python() {
        let len = |s: &str| literal_len(s.as_bytes(), 0);
        assert_eq!(len("1.5e-05)"), 7);
        assert_eq!(len("2.,"), 2);
        assert_eq!(len(".25 "), 3);
        assert_eq!(len("1e)"), 1);
        assert_eq!(len("3E+2x"), 4);
        assert_eq!(len("x"), 0);
        assert_eq!(literal_len(b"(0.75)", 1), 4);
    }

    #[test]
    fn matches_cpython() {
        let cases = [
            (6.123233995736766e-17, "6.123233995736766e-17"),
            (3.749399456654644e-33, "3.749399456654644e-33"),
            (-6.123233995736766e-17, "-6.123233995736766e-17"),
            (1.0421052631578949, "1.0421052631578949"),
            (0.38281250000000006, "0.38281250000000006"),
            (1.0, "1.0"),
            (-0.75, "-0.75"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (0.0001, "0.0001"),
            (0.00012, "0.00012"),
            (1e-05, "1e-05"),
            (1.5e-05, "1.5e-05"),
            (123456.0, "123456.0"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.2345e22, "1.2345e+22"),
            (0.1 + 0.2, "0.30000000000000004"),
        ];
        for (x, want) in cases {
            assert_eq!(repr(x), want, "repr({x:e})");
        }
    }
}
