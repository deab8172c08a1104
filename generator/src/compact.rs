//! The compact form of GenCAD code that the generator reads and writes: the import line and
//! the comment lines dropped (both are fixed boilerplate that [`inflate`] puts back) and every
//! decimal number at [`SIGNIFICANT_DIGITS`] significant digits. A 17-digit `k*s/95` costs a
//! small model many tokens and teaches it nothing about the shape; 4 digits move a vertex by
//! at most 5e-4 of its coordinate, far below the IoU voxel pitch (0.05 after normalisation).
//!
//! The compact form is itself valid CadQuery once inflated, so a generated program runs as is.

use indexer::dialect::map_decimals;

/// Significant digits kept of every decimal literal.
pub const SIGNIFICANT_DIGITS: usize = 4;

/// The first line of every program of the dialect.
pub const IMPORT_LINE: &str = "import cadquery as cq";

/// `code` in compact form: no import, no comments, no blank lines, rounded decimals, one
/// statement per line, each line ending in `\n`.
pub fn compact(code: &str) -> String {
    let mut out = String::with_capacity(code.len() / 2);
    for line in code.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || t == IMPORT_LINE {
            continue;
        }
        map_decimals(line.trim_end(), &mut out, round_decimal);
        out.push('\n');
    }
    out
}

/// Compact code back to a full program in the dataset's layout: the import line, and before
/// each `wp_sketchN = ...` line the dataset's comment for sketch N.
pub fn inflate(compact_code: &str) -> String {
    let mut out = String::with_capacity(compact_code.len() + 200);
    out.push_str(IMPORT_LINE);
    out.push('\n');
    for line in compact_code.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if let Some(n) = sketch_number(line) {
            out.push_str("# Generating a workplane for sketch ");
            out.push_str(n);
            out.push('\n');
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The N of a line `wp_sketchN = ...`.
fn sketch_number(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("wp_sketch")?;
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    (end > 0 && rest[end..].trim_start().starts_with('=')).then(|| &rest[..end])
}

/// `v` at [`SIGNIFICANT_DIGITS`] digits, always with a decimal point (`0.0`, `1.5`, `0.04737`)
/// so the literal stays a Python float; magnitudes below 1e-9 (the 6.1e-17 of cos(pi/2))
/// become `0.0`.
pub fn round_decimal(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    if v.abs() < 1e-9 {
        return "0.0".into();
    }
    let magnitude = v.abs().log10().floor() as i32;
    let decimals = (SIGNIFICANT_DIGITS as i32 - 1 - magnitude).max(1) as usize;
    let s = format!("{v:.decimals$}");
    let s = s.trim_end_matches('0');
    if s.ends_with('.') {
        format!("{s}0")
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODE: &str = "import cadquery as cq\n# Generating a workplane for sketch 0\nwp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(-0.75, 0.0, 0.0), cq.Vector(6.123233995736766e-17, 0.0, -1.0), cq.Vector(1.0, 0.0, 0.0)))\nloop0=wp_sketch0.moveTo(1.0421052631578949, 0.0).lineTo(1.0421052631578949, 1.5).close()\nloop1=wp_sketch0.moveTo(0.5210526315789474, 0.1736842105263158).circle(0.04736842105263158)\nsolid0=wp_sketch0.add(loop0).add(loop1).extrude(0.0234375, both=True)\nsolid=solid0\n# Generating a workplane for sketch 1\nwp_sketch1 = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 12.5), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nloop2=wp_sketch1.moveTo(-100.26, 0.0).circle(1e-3)\nsolid1=wp_sketch1.add(loop2).extrude(-0.5)\nsolid=solid.cut(solid1)\n";

    #[test]
    fn rounds_decimals_to_four_significant_digits() {
        for (v, s) in [
            (1.0421052631578949, "1.042"),
            (0.04736842105263158, "0.04737"),
            (-0.75, "-0.75"),
            (0.0, "0.0"),
            (6.123233995736766e-17, "0.0"),
            (12.5, "12.5"),
            (-100.26, "-100.3"),
            (1234.5, "1234.5"),
            (1.0, "1.0"),
            (0.0234375, "0.02344"),
        ] {
            assert_eq!(round_decimal(v), s, "{v}");
        }
    }

    #[test]
    fn compact_drops_boilerplate_and_keeps_names() {
        let c = compact(CODE);
        assert!(!c.contains('#') && !c.contains("import"), "{c}");
        assert!(c.starts_with("wp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(-0.75, 0.0, 0.0), cq.Vector(0.0, 0.0, -1.0), cq.Vector(1.0, 0.0, 0.0)))\n"), "{c}");
        assert!(
            c.contains("loop0=wp_sketch0.moveTo(1.042, 0.0).lineTo(1.042, 1.5).close()\n"),
            "{c}"
        );
        assert!(c.contains("extrude(0.02344, both=True)"), "{c}");
        assert!(c.contains("moveTo(-100.3, 0.0).circle(0.001)"), "{c}");
        assert!(c.contains("solid=solid.cut(solid1)\n"), "{c}");
    }

    #[test]
    fn inflate_restores_the_layout_and_compact_is_idempotent() {
        let c = compact(CODE);
        let full = inflate(&c);
        assert!(full.starts_with(
            "import cadquery as cq\n# Generating a workplane for sketch 0\nwp_sketch0 = "
        ));
        assert!(full.contains("solid=solid0\n# Generating a workplane for sketch 1\nwp_sketch1 = "));
        assert_eq!(full.lines().count(), CODE.lines().count());
        assert_eq!(compact(&full), c);
        assert_eq!(compact(&c), c);
    }
}
