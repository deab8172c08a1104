//! Statistics of GenCAD-dialect code, printed next to the real test split's figures
//! (docs/gencad.md) so a corpus can be checked against the dataset it imitates.

use dialect::{Loop, Op, Seg};
use serde::Serialize;

/// Appends `line` to `out` with every decimal literal (`1.5`, `6.1e-17`) replaced by
/// `round(value)`; integers and digits inside names (`loop12`, `wp_sketch0`) stay as written.
/// The code views of the CLIP text tower and of the generator both round numbers this way.
pub fn map_decimals(line: &str, out: &mut String, round: impl Fn(f64) -> String) {
    let b = line.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let starts_number = b[i].is_ascii_digit()
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'));
        if !starts_number {
            let c = line[i..].chars().next().expect("index on a char boundary");
            out.push(c);
            i += c.len_utf8();
            continue;
        }
        let mut j = i;
        while j < b.len()
            && (b[j].is_ascii_digit()
                || b[j] == b'.'
                || b[j] == b'e'
                || b[j] == b'E'
                || ((b[j] == b'-' || b[j] == b'+') && j > i && matches!(b[j - 1], b'e' | b'E')))
        {
            j += 1;
        }
        let text = &line[i..j];
        let decimal = text.contains(['.', 'e', 'E']);
        match text.parse::<f64>() {
            Ok(v) if decimal => out.push_str(&round(v)),
            _ => out.push_str(text),
        }
        i = j;
    }
}

/// Counts over a set of programs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DialectStats {
    pub parts: usize,
    /// Parts with 1, 2, 3, and 4 or more sketches.
    pub sketch_hist: [usize; 4],
    pub line_to: usize,
    pub circle: usize,
    pub three_point_arc: usize,
    pub union: usize,
    pub cut: usize,
    pub both: usize,
    /// Programs the dialect parser refuses (other methods, broken references).
    pub not_dialect: usize,
    lengths: Vec<usize>,
}

/// One row of the comparison: our value, the real one, and whether it is within tolerance.
#[derive(Debug, Clone, Serialize)]
pub struct StatRow {
    pub name: &'static str,
    pub ours: f64,
    pub real: f64,
    pub within_5_points: bool,
}

/// The real test split's figures (docs/gencad.md): percent of parts with 1/2/3/4+ sketches, and
/// occurrences per 100 parts.
pub const REAL: [(&str, f64); 11] = [
    ("% parts with 1 sketch", 57.0),
    ("% parts with 2 sketches", 19.0),
    ("% parts with 3 sketches", 12.0),
    ("% parts with 4-8 sketches", 12.0),
    ("lineTo per 100 parts", 550.0),
    ("circle per 100 parts", 110.0),
    ("threePointArc per 100 parts", 70.0),
    ("union per 100 parts", 70.0),
    ("cut per 100 parts", 25.0),
    ("both=True per 100 parts", 9.0),
    ("median code length (chars)", 710.0),
];

impl DialectStats {
    /// Add one program. Counts come from the parsed program; a text outside the dialect
    /// counts only in `not_dialect` and its length.
    pub fn add(&mut self, code: &str) {
        self.parts += 1;
        self.lengths.push(code.chars().count());
        let Ok(program) = dialect::parse(code) else {
            self.not_dialect += 1;
            return;
        };
        self.sketch_hist[program.sketch_count().clamp(1, 4) - 1] += 1;
        for sketch in &program.sketches {
            match sketch.op {
                Op::Union => self.union += 1,
                Op::Cut => self.cut += 1,
                Op::First => {}
            }
            self.both += usize::from(sketch.extrude.both);
            for lp in &sketch.loops {
                match lp {
                    Loop::Circle { .. } => self.circle += 1,
                    Loop::Path { segs, .. } => {
                        for seg in segs {
                            match seg {
                                Seg::Line(_) => self.line_to += 1,
                                Seg::Arc { .. } => self.three_point_arc += 1,
                            }
                        }
                    }
                }
            }
        }
    }

    /// Median code length in characters.
    pub fn median_length(&self) -> f64 {
        let mut l = self.lengths.clone();
        l.sort_unstable();
        match l.len() {
            0 => 0.0,
            n if n % 2 == 1 => l[n / 2] as f64,
            n => (l[n / 2 - 1] + l[n / 2]) as f64 / 2.0,
        }
    }

    /// Longest program in characters.
    pub fn max_length(&self) -> usize {
        self.lengths.iter().copied().max().unwrap_or(0)
    }

    /// Our figures in the order of [`REAL`], next to the real ones. "Within 5 points" means 5
    /// percentage points for shares, 5% of the real figure for counts and lengths.
    pub fn compare(&self) -> Vec<StatRow> {
        let parsed = self.parts - self.not_dialect;
        let per100 = |x: usize| 100.0 * x as f64 / parsed.max(1) as f64;
        let ours = [
            per100(self.sketch_hist[0]),
            per100(self.sketch_hist[1]),
            per100(self.sketch_hist[2]),
            per100(self.sketch_hist[3]),
            per100(self.line_to),
            per100(self.circle),
            per100(self.three_point_arc),
            per100(self.union),
            per100(self.cut),
            per100(self.both),
            self.median_length(),
        ];
        REAL.iter()
            .zip(ours)
            .enumerate()
            .map(|(i, ((name, real), ours))| {
                let tolerance = if i < 4 {
                    5.0
                } else {
                    (real * 0.05f64).max(5.0)
                };
                StatRow {
                    name,
                    ours,
                    real: *real,
                    within_5_points: (ours - real).abs() <= tolerance,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_reference_samples() {
        let mut s = DialectStats::default();
        for sample in evaluator::reference::samples() {
            s.add(&sample.cadquery);
        }
        assert_eq!(s.parts, 8);
        assert_eq!(s.sketch_hist, [5, 0, 2, 1]);
        assert_eq!(s.line_to, 43);
        assert_eq!(s.circle, 16);
        assert_eq!(s.three_point_arc, 11);
        assert_eq!(s.union, 5);
        assert_eq!(s.cut, 2);
        assert_eq!(s.both, 2);
        assert_eq!(s.not_dialect, 0);
        assert_eq!(s.max_length(), 1790);
        assert_eq!(s.median_length(), (1352.0 + 759.0) / 2.0);
        s.add("import cadquery as cq\nsolid = cq.Workplane().box(1, 1, 1)\n");
        assert_eq!((s.parts, s.not_dialect, s.line_to), (9, 1, 43));
    }
}
