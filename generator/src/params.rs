//! The numeric parameters of a GenCAD-dialect program, for derivative-free numeric refinement.
//!
//! [`Program::parse`] reads a program (the dataset's layout or the compact form: the import
//! line and comments are optional) and places every numeric literal: plane origin, plane axis
//! component, sketch coordinate, circle radius or extrude distance. Any number it cannot place
//! is an error, so a search over [`Program::params`] sees every number that shapes the part.
//! [`Program::write`] puts new values back with every other byte unchanged.
//!
//! Parameters ([`Param`]), listed sketch by sketch (origin x, y, z, then the sketch's scale,
//! then its circles' radii in loop order), then one extrude distance per solid:
//! - `Origin`: a component of the sketch plane's origin (world units).
//! - `Scale`: a factor applied to every coordinate and radius of the sketch about its local
//!   origin (0, 0). Its current value is always 1.0 (the program as parsed); the recovered
//!   DeepCAD sketch scale s is available from [`Program::sketch_scale`].
//! - `Radius`: a circle's radius in the sketch's own units, before the sketch's `Scale`.
//! - `Extrude`: the first argument of `.extrude(d)` / `.extrude(d, both=True)`.
//!
//! Out-of-range values are clamped, never rejected, so every written program is valid
//! dialect: a non-finite value keeps the current value, a `Scale` factor is clamped to
//! [`SCALE_RANGE`], a radius below [`MIN_RADIUS`] becomes [`MIN_RADIUS`], an extrude shorter
//! than [`MIN_EXTRUDE`] (1/128 when quantising) keeps its sign (the current one when the new
//! value is exactly 0) at that length. A value equal to the current one is written back as
//! the original text.
//!
//! Quantisation (DeepCAD): origins and extrudes are multiples of 1/128 in [-1, 1]; sketch
//! coordinates and radii are `k * (s / 95)` with integers k in [-128, 127] and a sketch scale
//! s, a multiple of 1/128 in (0, 2]. [`Program::parse`] recovers s and the ks per sketch (see
//! [`Program::sketch_scale`]); the middle points of `threePointArc` are computed from the arc,
//! not quantised, and take no part in the recovery (they are scaled by the same factor).

use std::collections::HashMap;
use std::ops::Range;

use thiserror::Error;

/// Steps per unit of DeepCAD's grid for plane origins, extrude distances and sketch scales.
pub const GRID_STEPS: f64 = 128.0;
/// Grid units per sketch scale: a quantised sketch coordinate is `k * (s / 95)`.
pub const SKETCH_UNITS: f64 = 95.0;
/// Smallest |extrude| written without quantisation (an extrude of 0 makes no solid).
pub const MIN_EXTRUDE: f64 = 1e-4;
/// Smallest circle radius (before the sketch's scale) written (a radius <= 0 is no circle).
pub const MIN_RADIUS: f64 = 1e-4;
/// Range a `Scale` factor is clamped to (a factor <= 0 would collapse or mirror the sketch).
pub const SCALE_RANGE: (f64, f64) = (1e-3, 1e3);

/// Largest sketch scale of DeepCAD, in grid steps (s = 2).
const MAX_SCALE_STEPS: u32 = 256;
/// Tolerance of the exact pass of the scale recovery (full-precision literals).
const EXACT_TOLERANCE: f64 = 1e-9;
/// Literals with at least this many significant digits were written at full precision.
const FULL_PRECISION_DIGITS: usize = 15;

/// Why code could not be read as a dialect program, or values not written into it.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ParamError {
    /// The text is not the Python subset the dialect uses.
    #[error("line {line}, column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    /// A number that is not a plane vector component, moveTo/lineTo/threePointArc
    /// coordinate, circle radius or extrude distance of a known sketch.
    #[error(
        "line {line}, column {column}: cannot place the number `{text}` in `{statement}` \
         (only cq.Plane vectors, moveTo/lineTo/threePointArc points, circle radii and the \
         extrude distance of a wp_sketch are parameters)"
    )]
    UnplacedNumber {
        line: usize,
        column: usize,
        text: String,
        statement: String,
    },
    /// No `wp_sketchN = cq.Workplane(cq.Plane(...))` line.
    #[error(
        "no sketch: expected a line `wp_sketchN = cq.Workplane(cq.Plane(cq.Vector(..), \
         cq.Vector(..), cq.Vector(..)))`"
    )]
    NoSketch,
    /// No `.extrude(distance)` with a numeric distance.
    #[error("no extrude: expected `solidN=wp_sketchN.add(loopK)...extrude(distance)`")]
    NoExtrude,
    /// `write` got a value slice that does not match `params`.
    #[error("expected {expected} values (one per parameter), got {got}")]
    ValueCount { expected: usize, got: usize },
}

/// What a numeric literal of the program means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Component `axis` (0 = x, 1 = y, 2 = z) of sketch `sketch`'s plane origin.
    Origin { sketch: usize, axis: usize },
    /// A component of sketch `sketch`'s xDir or normal vector (fixed, not a parameter).
    PlaneAxis { sketch: usize },
    /// A moveTo/lineTo/threePointArc coordinate of loop `loop_no` of sketch `sketch`;
    /// `arc_mid` marks a threePointArc middle point (derived from the arc, not quantised).
    Coord {
        sketch: usize,
        loop_no: usize,
        arc_mid: bool,
    },
    /// The radius of the circle of loop `loop_no` of sketch `sketch`.
    Radius { sketch: usize, loop_no: usize },
    /// The distance of solid `solid`'s extrude.
    Extrude { solid: usize },
}

/// One numeric literal: where it is in the code, its value and its role.
#[derive(Debug, Clone, PartialEq)]
pub struct Literal {
    /// Byte range of the literal in the code, sign included.
    pub span: Range<usize>,
    /// The value Python reads.
    pub value: f64,
    /// What the number means.
    pub role: Role,
}

/// A tunable parameter. Sketches, loops and solids are numbered in program order from 0
/// (`wp_sketchN`, `loopK`, `solidN` of the dialect).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Param {
    /// Component `axis` (0 = x, 1 = y, 2 = z) of a sketch plane's origin.
    Origin { sketch: usize, axis: usize },
    /// Factor on all coordinates and radii of a sketch about its local origin (current: 1.0).
    Scale { sketch: usize },
    /// Radius of the circle of loop `loop_no` (sketch units, before the sketch's `Scale`).
    Radius { sketch: usize, loop_no: usize },
    /// Extrude distance of solid `solid` (sign included).
    Extrude { solid: usize },
}

/// A parsed dialect program: its text, every numeric literal with its role, and its params.
#[derive(Debug, Clone)]
pub struct Program {
    code: String,
    literals: Vec<Literal>,
    params: Vec<Param>,
    /// The literal behind each param (None for `Scale`).
    param_literal: Vec<Option<usize>>,
    /// Recovered DeepCAD sketch scale per sketch, in 1/128 steps.
    scale_steps: Vec<Option<u32>>,
    /// Grid integer k of each literal of a quantised sketch (coordinates and radii).
    grid_k: Vec<Option<i64>>,
}

impl Program {
    /// Parses dialect code, placing every numeric literal (errors name the first misfit).
    pub fn parse(code: &str) -> Result<Program, ParamError> {
        let (toks, nums) = tokenize(code)?;
        let mut b = Builder::new(nums.len());
        let mut p = Parser {
            code,
            toks: &toks,
            pos: 0,
        };
        while !p.at_end() {
            let stmt = p.statement()?;
            b.statement(&stmt);
        }
        if let Some(i) = b.roles.iter().position(Option::is_none) {
            let span = nums[i].span.clone();
            let (line, column) = line_col(code, span.start);
            return Err(ParamError::UnplacedNumber {
                line,
                column,
                text: code[span].to_string(),
                statement: statement_text(code, nums[i].span.start),
            });
        }
        if b.sketch_count == 0 {
            return Err(ParamError::NoSketch);
        }
        let literals: Vec<Literal> = nums
            .into_iter()
            .zip(b.roles)
            .filter_map(|(n, r)| {
                r.map(|role| Literal {
                    span: n.span,
                    value: n.value,
                    role,
                })
            })
            .collect();
        if !literals
            .iter()
            .any(|l| matches!(l.role, Role::Extrude { .. }))
        {
            return Err(ParamError::NoExtrude);
        }
        let (params, param_literal) = list_params(&literals, b.sketch_count);
        let mut scale_steps = vec![None; b.sketch_count];
        let mut grid_k = vec![None; literals.len()];
        for (sketch, steps) in scale_steps.iter_mut().enumerate() {
            let members: Vec<usize> = (0..literals.len())
                .filter(|&i| on_grid_of(&literals[i].role, sketch))
                .collect();
            let texts: Vec<&str> = members
                .iter()
                .map(|&i| &code[literals[i].span.clone()])
                .collect();
            let values: Vec<(f64, bool)> = members
                .iter()
                .map(|&i| {
                    let radius = matches!(literals[i].role, Role::Radius { .. });
                    (literals[i].value, radius)
                })
                .collect();
            if let Some((m, ks)) = recover_scale(&values, &texts) {
                *steps = Some(m);
                for (&i, k) in members.iter().zip(ks) {
                    grid_k[i] = Some(k);
                }
            }
        }
        Ok(Program {
            code: code.to_string(),
            literals,
            params,
            param_literal,
            scale_steps,
            grid_k,
        })
    }

    /// The code as parsed.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// Every numeric literal in source order, with its role.
    pub fn literals(&self) -> &[Literal] {
        &self.literals
    }

    /// The tunable parameters, in the order `values` and `write` use.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// Number of sketches (`wp_sketchN` definitions).
    pub fn sketch_count(&self) -> usize {
        self.scale_steps.len()
    }

    /// The recovered DeepCAD scale s of a sketch (a multiple of 1/128 in (0, 2]), or None
    /// when its coordinates fit no such grid (then quantised writing scales it continuously).
    pub fn sketch_scale(&self, sketch: usize) -> Option<f64> {
        self.scale_steps
            .get(sketch)
            .copied()
            .flatten()
            .map(|m| f64::from(m) / GRID_STEPS)
    }

    /// Current value per param: the literal's value, and 1.0 for every `Scale`.
    pub fn values(&self) -> Vec<f64> {
        self.param_literal
            .iter()
            .map(|l| l.map_or(1.0, |i| self.literals[i].value))
            .collect()
    }

    /// The program text with the numbers set from `values` (one per param) and all other
    /// bytes unchanged; `quantise` snaps to DeepCAD's grids (see the module docs).
    pub fn write(&self, values: &[f64], quantise: bool) -> Result<String, ParamError> {
        if values.len() != self.params.len() {
            return Err(ParamError::ValueCount {
                expected: self.params.len(),
                got: values.len(),
            });
        }
        let n_sketch = self.sketch_count();
        let mut target: Vec<f64> = self.literals.iter().map(|l| l.value).collect();
        let mut factor = vec![1.0; n_sketch];
        for ((param, &v), lit) in self.params.iter().zip(values).zip(&self.param_literal) {
            let current = lit.map_or(1.0, |i| self.literals[i].value);
            let v = if v.is_finite() { v } else { current };
            let same = v.to_bits() == current.to_bits();
            match (*param, *lit) {
                (Param::Origin { .. }, Some(i)) => {
                    target[i] = if quantise { snap_unit(v) } else { v };
                }
                (Param::Scale { sketch }, _) => {
                    factor[sketch] = if same {
                        v
                    } else {
                        v.clamp(SCALE_RANGE.0, SCALE_RANGE.1)
                    };
                }
                (Param::Radius { .. }, Some(i)) => {
                    target[i] = if same { v } else { v.max(MIN_RADIUS) };
                }
                (Param::Extrude { .. }, Some(i)) => {
                    target[i] = if same && !quantise {
                        v
                    } else {
                        extrude_value(v, current, quantise)
                    };
                }
                _ => {}
            }
        }
        // Per sketch: the scale actually applied, and the new grid unit s'/95 if quantised.
        let mut applied = factor.clone();
        let mut unit: Vec<Option<(f64, f64)>> = vec![None; n_sketch];
        if quantise {
            for sketch in 0..n_sketch {
                if let Some(m) = self.scale_steps[sketch] {
                    let s = f64::from(m) / GRID_STEPS;
                    let m_new = (s * factor[sketch] * GRID_STEPS)
                        .round()
                        .clamp(1.0, f64::from(MAX_SCALE_STEPS));
                    let s_new = m_new / GRID_STEPS;
                    applied[sketch] = s_new / s;
                    unit[sketch] = Some((s / SKETCH_UNITS, s_new / SKETCH_UNITS));
                }
            }
        }
        let mut out = String::with_capacity(self.code.len() + 64);
        let mut at = 0;
        for (i, lit) in self.literals.iter().enumerate() {
            let new = match lit.role {
                Role::Origin { .. } | Role::Extrude { .. } => target[i],
                Role::PlaneAxis { .. } => lit.value,
                Role::Coord {
                    sketch, arc_mid, ..
                } => match (unit[sketch], self.grid_k[i], arc_mid) {
                    (Some((_, u_new)), Some(k), false) => k as f64 * u_new,
                    _ => lit.value * applied[sketch],
                },
                Role::Radius { sketch, .. } => match (unit[sketch], self.grid_k[i]) {
                    (Some((u_old, u_new)), Some(k)) => {
                        let k = if target[i].to_bits() == lit.value.to_bits() {
                            k
                        } else {
                            ((target[i] / u_old).round() as i64).max(1)
                        };
                        k as f64 * u_new
                    }
                    _ => target[i] * applied[sketch],
                },
            };
            out.push_str(&self.code[at..lit.span.start]);
            if new.to_bits() == lit.value.to_bits() || !new.is_finite() {
                out.push_str(&self.code[lit.span.clone()]);
            } else {
                out.push_str(&py_float(new));
            }
            at = lit.span.end;
        }
        out.push_str(&self.code[at..]);
        Ok(out)
    }
}

/// `v` on the 1/128 grid, clamped to [-1, 1], never -0.0.
fn snap_unit(v: f64) -> f64 {
    ((v * GRID_STEPS).round() / GRID_STEPS).clamp(-1.0, 1.0) + 0.0
}

/// A written extrude distance: never 0 (keeps the sign of `v`, or of `current` if `v` is 0).
fn extrude_value(v: f64, current: f64, quantise: bool) -> f64 {
    let negative = v < 0.0 || (v == 0.0 && current < 0.0);
    let sign = if negative { -1.0 } else { 1.0 };
    if quantise {
        let q = snap_unit(v);
        if q == 0.0 {
            sign / GRID_STEPS
        } else {
            q
        }
    } else if v.abs() < MIN_EXTRUDE {
        sign * MIN_EXTRUDE
    } else {
        v
    }
}

/// Whether a literal with this role is one of `sketch`'s grid numbers (not arc middles).
fn on_grid_of(role: &Role, sketch: usize) -> bool {
    match *role {
        Role::Coord {
            sketch: s,
            arc_mid: false,
            ..
        }
        | Role::Radius { sketch: s, .. } => s == sketch,
        _ => false,
    }
}

/// Params in the documented order, with the literal behind each.
fn list_params(literals: &[Literal], n_sketch: usize) -> (Vec<Param>, Vec<Option<usize>>) {
    let mut params = Vec::new();
    let mut lits = Vec::new();
    for sketch in 0..n_sketch {
        for axis in 0..3 {
            if let Some(i) = literals
                .iter()
                .position(|l| l.role == Role::Origin { sketch, axis })
            {
                params.push(Param::Origin { sketch, axis });
                lits.push(Some(i));
            }
        }
        if literals.iter().any(|l| {
            matches!(l.role, Role::Coord { sketch: s, .. } | Role::Radius { sketch: s, .. } if s == sketch)
        }) {
            params.push(Param::Scale { sketch });
            lits.push(None);
        }
        for (i, l) in literals.iter().enumerate() {
            if let Role::Radius { sketch: s, loop_no } = l.role {
                if s == sketch {
                    params.push(Param::Radius { sketch, loop_no });
                    lits.push(Some(i));
                }
            }
        }
    }
    for (i, l) in literals.iter().enumerate() {
        if let Role::Extrude { solid } = l.role {
            params.push(Param::Extrude { solid });
            lits.push(Some(i));
        }
    }
    (params, lits)
}

/// The smallest sketch scale m/128 (m in 1..=256) on whose grid `s/95` every value is
/// `k * (s / 95)` with k in [-128, 127] (radii: k >= 1), and those ks. A first pass asks for
/// an exact fit (full-precision literals); if none fits and the literals look rounded, a
/// second pass allows each literal its rounding error, estimated from how the sketch's
/// literals are spelled (the most decimals P and most significant digits D among them:
/// max(0.5e-P, half a unit in the D-th digit of the value)), and only on grids whose unit is
/// more than 4 times that error (a finer grid would fit anything).
fn recover_scale(values: &[(f64, bool)], texts: &[&str]) -> Option<(u32, Vec<i64>)> {
    if values.is_empty() {
        return None;
    }
    let exact: Vec<f64> = values
        .iter()
        .map(|(v, _)| EXACT_TOLERANCE * v.abs().max(1.0))
        .collect();
    if let Some(found) = fit_grid(values, &exact) {
        return Some(found);
    }
    let spelled: Vec<(usize, usize)> = texts.iter().map(|t| spelling(t)).collect();
    let decimals = spelled.iter().map(|s| s.0).max().unwrap_or(0);
    let digits = spelled.iter().map(|s| s.1).max().unwrap_or(0);
    if digits >= FULL_PRECISION_DIGITS {
        return None;
    }
    let rounded: Vec<f64> = values
        .iter()
        .map(|(v, _)| {
            let by_decimals = 0.5 * 10f64.powi(-(decimals as i32));
            let by_digits = if *v == 0.0 || digits == 0 {
                0.0
            } else {
                0.5 * 10f64.powi(v.abs().log10().floor() as i32 - digits as i32 + 1)
            };
            by_decimals.max(by_digits) * (1.0 + 1e-6) + 1e-12
        })
        .collect();
    fit_grid(values, &rounded)
}

/// The first grid m/128 that fits all values within their tolerances (see `recover_scale`).
fn fit_grid(values: &[(f64, bool)], tol: &[f64]) -> Option<(u32, Vec<i64>)> {
    let worst = tol.iter().copied().fold(0.0, f64::max);
    'grid: for m in 1..=MAX_SCALE_STEPS {
        let unit = f64::from(m) / GRID_STEPS / SKETCH_UNITS;
        if unit <= 4.0 * worst {
            continue;
        }
        let mut ks = Vec::with_capacity(values.len());
        for (&(v, radius), &t) in values.iter().zip(tol) {
            let k = (v / unit).round();
            let lo = if radius { 1.0 } else { -128.0 };
            if !(lo..=127.0).contains(&k) || (v - k * unit).abs() > t {
                continue 'grid;
            }
            ks.push(k as i64);
        }
        return Some((m, ks));
    }
    None
}

/// (decimal places, significant digits) of a number as written: `0.04737` -> (5, 4),
/// `1.5e-05` -> (6, 2), `-0.75` -> (2, 2), `2` -> (0, 1), `0.0` -> (1, 0).
fn spelling(text: &str) -> (usize, usize) {
    let t = text.trim_start_matches(['-', '+', ' ', '\t']);
    let (mantissa, exp) = match t.find(['e', 'E']) {
        Some(p) => (&t[..p], t[p + 1..].parse::<i64>().unwrap_or(0)),
        None => (t, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let decimals = (frac.len() as i64 - exp).max(0) as usize;
    let all: String = int.chars().chain(frac.chars()).collect();
    let digits = all.trim_start_matches('0').len();
    (decimals, digits)
}

/// `x` as Python's `repr(float)` writes it, except that zero of either sign is `0.0` (the
/// dataset writes no negative zeros). Callers pass finite values only.
fn py_float(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return "0.0".to_string();
    }
    dialect::pyfloat::repr(x)
}

/// 1-based line and column of a byte offset.
fn line_col(code: &str, at: usize) -> (usize, usize) {
    let before = &code[..at.min(code.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |p| p + 1) + 1;
    (line, column)
}

/// The (trimmed, shortened) source line containing byte `at`, for error messages.
fn statement_text(code: &str, at: usize) -> String {
    let start = code[..at].rfind('\n').map_or(0, |p| p + 1);
    let end = code[at..].find('\n').map_or(code.len(), |p| at + p);
    let line = code[start..end].trim();
    if line.chars().count() > 80 {
        let cut: String = line.chars().take(77).collect();
        format!("{cut}...")
    } else {
        line.to_string()
    }
}

// ---------------------------------------------------------------------------------------
// Tokenizer and parser for the Python subset of the dialect.

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok {
    /// An identifier.
    Name,
    /// A numeric literal (index into the number list).
    Num(usize),
    /// A string literal (its content is not inspected).
    Str,
    /// One of `( ) , . =`.
    Punct(u8),
    /// End of a statement (newline or `;` outside parentheses).
    End,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    span: Range<usize>,
}

#[derive(Debug, Clone)]
struct RawNum {
    span: Range<usize>,
    value: f64,
}

fn syntax(code: &str, at: usize, message: impl Into<String>) -> ParamError {
    let (line, column) = line_col(code, at);
    ParamError::Syntax {
        line,
        column,
        message: message.into(),
    }
}

/// Splits code into tokens; a sign directly after `(`, `,`, `=` or a statement start
/// belongs to the number that follows it.
fn tokenize(code: &str) -> Result<(Vec<Token>, Vec<RawNum>), ParamError> {
    let b = code.as_bytes();
    let mut toks: Vec<Token> = Vec::new();
    let mut nums: Vec<RawNum> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    let push_end = |toks: &mut Vec<Token>, at: usize| {
        if toks.last().is_some_and(|t| t.tok != Tok::End) {
            toks.push(Token {
                tok: Tok::End,
                span: at..at,
            });
        }
    };
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\r' | 0x0c => i += 1,
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'\\' => {
                let rest = &b[i + 1..];
                if rest.starts_with(b"\n") {
                    i += 2;
                } else if rest.starts_with(b"\r\n") {
                    i += 3;
                } else {
                    return Err(syntax(code, i, "unexpected `\\`"));
                }
            }
            b'\n' | b';' => {
                if depth == 0 {
                    push_end(&mut toks, i);
                } else if c == b';' {
                    return Err(syntax(code, i, "`;` inside parentheses"));
                }
                i += 1;
            }
            b'(' | b')' | b',' | b'.' | b'=' if !(c == b'.' && next_is_digit(b, i + 1)) => {
                if c == b'(' {
                    depth += 1;
                } else if c == b')' {
                    depth = depth
                        .checked_sub(1)
                        .ok_or_else(|| syntax(code, i, "unmatched `)`"))?;
                }
                toks.push(Token {
                    tok: Tok::Punct(c),
                    span: i..i + 1,
                });
                i += 1;
            }
            b'"' | b'\'' => {
                let start = i;
                i += 1;
                loop {
                    match b.get(i) {
                        None | Some(b'\n') => {
                            return Err(syntax(code, start, "unterminated string"));
                        }
                        Some(&q) if q == c => break,
                        Some(b'\\') => i += 2,
                        Some(_) => i += 1,
                    }
                }
                i += 1;
                toks.push(Token {
                    tok: Tok::Str,
                    span: start..i,
                });
            }
            _ if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                toks.push(Token {
                    tok: Tok::Name,
                    span: start..i,
                });
            }
            _ if c.is_ascii_digit() || c == b'.' || c == b'-' || c == b'+' => {
                let start = i;
                let mut negative = false;
                if c == b'-' || c == b'+' {
                    let sign_ok = match toks.last() {
                        None => true,
                        Some(t) => matches!(
                            t.tok,
                            Tok::End | Tok::Punct(b'(') | Tok::Punct(b',') | Tok::Punct(b'=')
                        ),
                    };
                    negative = c == b'-';
                    i += 1;
                    while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
                        i += 1;
                    }
                    let starts_number =
                        i < b.len() && (b[i].is_ascii_digit() || next_is_digit(b, i + 1));
                    if !sign_ok || !starts_number {
                        return Err(syntax(
                            code,
                            start,
                            format!("unexpected `{}` (arithmetic is not dialect)", c as char),
                        ));
                    }
                }
                let num_start = i;
                i += evaluator::pyfloat::literal_len(b, i);
                if i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
                    return Err(syntax(code, start, "malformed number"));
                }
                let magnitude: f64 = code[num_start..i]
                    .parse()
                    .map_err(|_| syntax(code, start, "malformed number"))?;
                let value = if negative { -magnitude } else { magnitude };
                if !value.is_finite() {
                    return Err(syntax(code, start, "number out of range"));
                }
                toks.push(Token {
                    tok: Tok::Num(nums.len()),
                    span: start..i,
                });
                nums.push(RawNum {
                    span: start..i,
                    value,
                });
            }
            _ => {
                let ch = code[i..].chars().next().unwrap_or('?');
                return Err(syntax(code, i, format!("unexpected character `{ch}`")));
            }
        }
    }
    if depth > 0 {
        return Err(syntax(code, code.len(), "unclosed `(`"));
    }
    push_end(&mut toks, code.len());
    Ok((toks, nums))
}

/// Whether byte `i` of `b` is an ASCII digit.
fn next_is_digit(b: &[u8], i: usize) -> bool {
    b.get(i).is_some_and(u8::is_ascii_digit)
}

/// An expression of the dialect's Python subset.
#[derive(Debug, Clone)]
enum Expr {
    Name(String),
    Num(usize),
    Str,
    Tuple(Vec<Expr>),
    Attr(Box<Expr>, String),
    Call(Box<Expr>, Vec<Arg>),
}

/// A call argument, positional or `name=value`.
#[derive(Debug, Clone)]
struct Arg {
    kw: Option<String>,
    value: Expr,
}

/// `[target =] value`, or a statement that is skipped (import) with its numbers.
#[derive(Debug, Clone)]
struct Stmt {
    target: Option<String>,
    value: Option<Expr>,
}

struct Parser<'a> {
    code: &'a str,
    toks: &'a [Token],
    pos: usize,
}

impl Parser<'_> {
    fn at_end(&self) -> bool {
        self.pos >= self.toks.len()
    }

    fn peek(&self) -> Option<Tok> {
        self.toks.get(self.pos).map(|t| t.tok)
    }

    fn peek2(&self) -> Option<Tok> {
        self.toks.get(self.pos + 1).map(|t| t.tok)
    }

    fn text(&self, i: usize) -> &str {
        self.toks.get(i).map_or("", |t| &self.code[t.span.clone()])
    }

    fn here(&self) -> usize {
        self.toks
            .get(self.pos)
            .map_or(self.code.len(), |t| t.span.start)
    }

    fn error(&self, message: &str) -> ParamError {
        let found = match self.peek() {
            None | Some(Tok::End) => "end of line".to_string(),
            Some(_) => format!("`{}`", self.text(self.pos)),
        };
        syntax(self.code, self.here(), format!("{message}, found {found}"))
    }

    fn expect(&mut self, p: u8, what: &str) -> Result<(), ParamError> {
        if self.peek() == Some(Tok::Punct(p)) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(what))
        }
    }

    fn statement(&mut self) -> Result<Stmt, ParamError> {
        let first = self.text(self.pos);
        if self.peek() == Some(Tok::Name) && (first == "import" || first == "from") {
            // Numbers in an import line are left unplaced (an error later).
            while !matches!(self.peek(), None | Some(Tok::End)) {
                self.pos += 1;
            }
            self.pos += 1;
            return Ok(Stmt {
                target: None,
                value: None,
            });
        }
        let mut target = None;
        if self.peek() == Some(Tok::Name) && self.peek2() == Some(Tok::Punct(b'=')) {
            target = Some(self.text(self.pos).to_string());
            self.pos += 2;
        }
        let value = self.expr()?;
        if !matches!(self.peek(), None | Some(Tok::End)) {
            return Err(self.error("expected the end of the statement"));
        }
        self.pos += 1;
        Ok(Stmt {
            target,
            value: Some(value),
        })
    }

    fn expr(&mut self) -> Result<Expr, ParamError> {
        let mut e = self.primary()?;
        loop {
            match self.peek() {
                Some(Tok::Punct(b'.')) => {
                    self.pos += 1;
                    if self.peek() != Some(Tok::Name) {
                        return Err(self.error("expected a name after `.`"));
                    }
                    let name = self.text(self.pos).to_string();
                    self.pos += 1;
                    e = Expr::Attr(Box::new(e), name);
                }
                Some(Tok::Punct(b'(')) => {
                    self.pos += 1;
                    let args = self.args()?;
                    e = Expr::Call(Box::new(e), args);
                }
                _ => return Ok(e),
            }
        }
    }

    fn primary(&mut self) -> Result<Expr, ParamError> {
        match self.peek() {
            Some(Tok::Name) => {
                let name = self.text(self.pos).to_string();
                self.pos += 1;
                Ok(Expr::Name(name))
            }
            Some(Tok::Num(i)) => {
                self.pos += 1;
                Ok(Expr::Num(i))
            }
            Some(Tok::Str) => {
                self.pos += 1;
                Ok(Expr::Str)
            }
            Some(Tok::Punct(b'(')) => {
                self.pos += 1;
                let mut items = Vec::new();
                let mut comma = false;
                while self.peek() != Some(Tok::Punct(b')')) {
                    items.push(self.expr()?);
                    if self.peek() == Some(Tok::Punct(b',')) {
                        self.pos += 1;
                        comma = true;
                    } else if self.peek() != Some(Tok::Punct(b')')) {
                        return Err(self.error("expected `,` or `)`"));
                    }
                }
                self.pos += 1;
                if items.len() == 1 && !comma {
                    Ok(items.remove(0))
                } else {
                    Ok(Expr::Tuple(items))
                }
            }
            _ => Err(self.error("expected a name, a number or `(`")),
        }
    }

    /// Call arguments after the `(`, through the `)`.
    fn args(&mut self) -> Result<Vec<Arg>, ParamError> {
        let mut args = Vec::new();
        while self.peek() != Some(Tok::Punct(b')')) {
            let mut kw = None;
            if self.peek() == Some(Tok::Name) && self.peek2() == Some(Tok::Punct(b'=')) {
                kw = Some(self.text(self.pos).to_string());
                self.pos += 2;
            }
            let value = self.expr()?;
            args.push(Arg { kw, value });
            if self.peek() == Some(Tok::Punct(b',')) {
                self.pos += 1;
            } else if self.peek() != Some(Tok::Punct(b')')) {
                return Err(self.error("expected `,` or `)`"));
            }
        }
        self.expect(b')', "expected `)`")?;
        Ok(args)
    }
}

/// One `.name` or `.name(args)` step of a method chain.
struct Step<'e> {
    name: &'e str,
    args: Option<&'e [Arg]>,
}

/// A chain `root.a(..).b(..)` as its root and steps.
fn flatten(e: &Expr) -> (&Expr, Vec<Step<'_>>) {
    match e {
        Expr::Attr(inner, name) => {
            let (root, mut steps) = flatten(inner);
            steps.push(Step { name, args: None });
            (root, steps)
        }
        Expr::Call(callee, args) => match callee.as_ref() {
            Expr::Attr(inner, name) => {
                let (root, mut steps) = flatten(inner);
                steps.push(Step {
                    name,
                    args: Some(args),
                });
                (root, steps)
            }
            _ => (e, Vec::new()),
        },
        _ => (e, Vec::new()),
    }
}

/// The positional (non-keyword) arguments of a call.
fn positional(args: &[Arg]) -> Vec<&Expr> {
    args.iter()
        .filter(|a| a.kw.is_none())
        .map(|a| &a.value)
        .collect()
}

/// What a name is bound to.
#[derive(Debug, Clone, Copy)]
enum Binding {
    Sketch(usize),
    Loop(usize),
}

/// Assigns roles to numbers statement by statement.
struct Builder {
    roles: Vec<Option<Role>>,
    names: HashMap<String, Binding>,
    sketch_count: usize,
    loop_sketch: Vec<usize>,
    solid_count: usize,
}

impl Builder {
    fn new(n_nums: usize) -> Self {
        Builder {
            roles: vec![None; n_nums],
            names: HashMap::new(),
            sketch_count: 0,
            loop_sketch: Vec::new(),
            solid_count: 0,
        }
    }

    fn place(&mut self, e: &Expr, role: Role) -> bool {
        if let Expr::Num(i) = e {
            if self.roles[*i].is_none() {
                self.roles[*i] = Some(role);
                return true;
            }
        }
        false
    }

    fn statement(&mut self, stmt: &Stmt) {
        let Some(value) = &stmt.value else { return };
        let (root, steps) = flatten(value);
        let mut sketch = None;
        let mut rest = &steps[..];
        let mut defined = false;
        if matches!(root, Expr::Name(n) if n == "cq") {
            if let Some(Step {
                name: "Workplane",
                args: Some(args),
            }) = steps.first()
            {
                sketch = Some(self.workplane(args));
                rest = &steps[1..];
                defined = true;
            }
        } else if let Expr::Name(n) = root {
            sketch = match self.names.get(n) {
                Some(Binding::Sketch(s)) => Some(*s),
                Some(Binding::Loop(l)) => self.loop_sketch.get(*l).copied(),
                None => None,
            };
        }
        let mut binding = None;
        if let Some(sk) = sketch {
            let loop_no = self.chain(sk, rest);
            binding = match (loop_no, defined && rest.is_empty()) {
                (Some(l), _) => Some(Binding::Loop(l)),
                (None, true) => Some(Binding::Sketch(sk)),
                (None, false) => None,
            };
        }
        if let Some(t) = &stmt.target {
            match binding {
                Some(bd) => {
                    self.names.insert(t.clone(), bd);
                }
                None => {
                    self.names.remove(t);
                }
            }
        }
    }

    /// `cq.Workplane(cq.Plane(origin, xDir, normal))`: a new sketch; places its vectors.
    fn workplane(&mut self, args: &[Arg]) -> usize {
        let sketch = self.sketch_count;
        self.sketch_count += 1;
        let pos = positional(args);
        if args.len() != 1 || pos.len() != 1 {
            return sketch;
        }
        let (root, steps) = flatten(pos[0]);
        let plane_args = match (root, steps.as_slice()) {
            (
                Expr::Name(cq),
                [Step {
                    name: "Plane",
                    args: Some(a),
                }],
            ) if cq == "cq" => *a,
            _ => return sketch,
        };
        for (n, arg) in plane_args.iter().enumerate() {
            let slot = match arg.kw.as_deref() {
                None => n,
                Some("origin") => 0,
                Some("xDir") => 1,
                Some("normal") => 2,
                Some(_) => continue,
            };
            let (root, steps) = flatten(&arg.value);
            let comps = match (root, steps.as_slice()) {
                (
                    Expr::Name(cq),
                    [Step {
                        name: "Vector",
                        args: Some(a),
                    }],
                ) if cq == "cq" && a.len() == 3 && positional(a).len() == 3 => positional(a),
                _ => continue,
            };
            for (axis, c) in comps.into_iter().enumerate() {
                let role = if slot == 0 {
                    Role::Origin { sketch, axis }
                } else {
                    Role::PlaneAxis { sketch }
                };
                if slot <= 2 {
                    self.place(c, role);
                }
            }
        }
        sketch
    }

    /// Drawing and extrude steps on sketch `sk`; returns the loop number if it draws.
    fn chain(&mut self, sk: usize, steps: &[Step]) -> Option<usize> {
        let draws = steps.iter().any(|s| {
            s.args.is_some() && matches!(s.name, "moveTo" | "lineTo" | "threePointArc" | "circle")
        });
        let loop_no = draws.then(|| {
            self.loop_sketch.push(sk);
            self.loop_sketch.len() - 1
        });
        let mut circle_seen = false;
        for step in steps {
            let Some(args) = step.args else { continue };
            let pos = positional(args);
            match (step.name, loop_no) {
                ("moveTo" | "lineTo", Some(l)) if args.len() == 2 && pos.len() == 2 => {
                    for c in pos {
                        self.place(c, coord(sk, l, false));
                    }
                }
                ("threePointArc", Some(l)) if args.len() == 2 && pos.len() == 2 => {
                    for (p, mid) in pos.into_iter().zip([true, false]) {
                        if let Expr::Tuple(xy) = p {
                            if xy.len() == 2 {
                                for c in xy {
                                    self.place(c, coord(sk, l, mid));
                                }
                            }
                        }
                    }
                }
                ("circle", Some(l)) if !circle_seen && args.len() == 1 && pos.len() == 1 => {
                    circle_seen = true;
                    self.place(
                        pos[0],
                        Role::Radius {
                            sketch: sk,
                            loop_no: l,
                        },
                    );
                }
                ("extrude", _) if !pos.is_empty() && matches!(pos[0], Expr::Num(_)) => {
                    let solid = self.solid_count;
                    if self.place(pos[0], Role::Extrude { solid }) {
                        self.solid_count += 1;
                    }
                }
                _ => {}
            }
        }
        loop_no
    }
}

/// The role of a sketch coordinate.
fn coord(sketch: usize, loop_no: usize, arc_mid: bool) -> Role {
    Role::Coord {
        sketch,
        loop_no,
        arc_mid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (id, code) of every real reference sample.
    fn real_programs() -> Vec<(String, String)> {
        evaluator::reference::samples()
            .into_iter()
            .map(|s| (s.deepcad_id, s.cadquery))
            .collect()
    }

    use crate::compact::compact;

    /// Like `compact`, but every decimal rounded to 4 decimal places.
    fn four_decimals(code: &str) -> String {
        rounded(code, |v| {
            let s = format!("{v:.4}");
            if s == "-0.0000" {
                "0.0".into()
            } else {
                s
            }
        })
    }

    /// `code` without import and comments, every decimal literal rewritten by `round`.
    fn rounded(code: &str, round: impl Fn(f64) -> String) -> String {
        let mut out = String::new();
        for line in code.lines() {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') || t.starts_with("import ") {
                continue;
            }
            // Every decimal literal (found by the tokenizer) at 4 significant digits.
            let (_, nums) = tokenize(line).expect("tokenizes");
            let mut at = 0;
            for n in nums {
                out.push_str(&line[at..n.span.start]);
                let text = &line[n.span.clone()];
                if text.contains(['.', 'e']) {
                    out.push_str(&round(n.value));
                } else {
                    out.push_str(text);
                }
                at = n.span.end;
            }
            out.push_str(&line[at..]);
            out.push('\n');
        }
        out
    }

    const HAND: &str = "import cadquery as cq\n\
# Generating a workplane for sketch 0\n\
wp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(-0.75, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n\
loop0=wp_sketch0.moveTo(1.5, 0.0).lineTo(1.5, 0.75).threePointArc((1.2803, 1.2803), (0.75, 1.5)).lineTo(0.0, 1.5).close()\n\
loop1=wp_sketch0.moveTo(0.3947, 0.3947).circle(0.1579)\n\
solid0=wp_sketch0.add(loop0).add(loop1).extrude(0.1172)\n\
solid=solid0\n\
# Generating a workplane for sketch 1\n\
wp_sketch1 = cq.Workplane(cq.Plane(cq.Vector(0, -0.25, 1e-05), cq.Vector(6.123233995736766e-17, 0.0, -1.0), cq.Vector(1.0, 0.0, 6.123233995736766e-17)))\n\
loop2=wp_sketch1.moveTo(2., 0.0).circle(-0.0 + 0.5)\n";

    const HAND_OK: &str = "wp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(-0.75, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n\
loop0=wp_sketch0.moveTo(1.5, 0.0).lineTo(1.5, 0.75).threePointArc((1.2803, 1.2803), (0.75, 1.5)).lineTo(0.0, 1.5).close()\n\
loop1=wp_sketch0.moveTo(0.3947, 0.3947).circle(0.1579)\n\
solid0=wp_sketch0.add(loop0).add(loop1).extrude(0.1172)\n\
solid=solid0\n\
wp_sketch1 = cq.Workplane(cq.Plane(cq.Vector(0, -0.25, 1e-05), cq.Vector(6.123233995736766e-17, 0.0, -1.0), cq.Vector(1.0, 0.0, 6.123233995736766e-17)))\n\
loop2=wp_sketch1.moveTo(2., -0.0).circle(.5)\n\
solid1=wp_sketch1.add(loop2).extrude(-0.25, both=True)\n\
solid=solid.cut(solid1)\n\
wp_sketch2 = cq.Workplane(cq.Plane(cq.Vector(0.5, 0.5, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n\
loop3=wp_sketch2.moveTo(0.1, 0.0).lineTo(0.1, 0.2).lineTo(0.0, 0.2).lineTo(0.0, 0.0).close()\n\
solid2=wp_sketch2.add(loop3).extrude(0.0625)\n\
solid=solid.union(solid2)\n";

    /// The literal texts of a written program (via a fresh parse).
    fn texts(code: &str) -> Vec<String> {
        let p = Program::parse(code).expect("parses");
        p.literals()
            .iter()
            .map(|l| code[l.span.clone()].to_string())
            .collect()
    }

    fn index_of(p: &Program, want: Param) -> usize {
        p.params()
            .iter()
            .position(|&q| q == want)
            .expect("param present")
    }

    #[test]
    fn round_trip_is_byte_identical_on_real_samples() {
        let rows = real_programs();
        assert_eq!(rows.len(), 8);
        for (id, code) in &rows {
            for c in [code.clone(), compact(code)] {
                let p = Program::parse(&c).unwrap_or_else(|e| panic!("{id}: {e}"));
                assert_eq!(p.write(&p.values(), false).expect("writes"), c, "{id}");
                assert!(p.params().len() >= 5, "{id}");
            }
        }
    }

    #[test]
    fn round_trip_hand_written_programs() {
        let p = Program::parse(HAND_OK).expect("parses");
        assert_eq!(p.write(&p.values(), false).expect("writes"), HAND_OK);
        assert_eq!(p.sketch_count(), 3);
        let extrudes: Vec<f64> = p
            .params()
            .iter()
            .zip(p.values())
            .filter(|(q, _)| matches!(q, Param::Extrude { .. }))
            .map(|(_, v)| v)
            .collect();
        assert_eq!(extrudes, vec![0.1172, -0.25, 0.0625]);
        // Param order: per sketch origin x,y,z, scale, radii; then extrudes.
        assert_eq!(
            &p.params()[..6],
            &[
                Param::Origin { sketch: 0, axis: 0 },
                Param::Origin { sketch: 0, axis: 1 },
                Param::Origin { sketch: 0, axis: 2 },
                Param::Scale { sketch: 0 },
                Param::Radius {
                    sketch: 0,
                    loop_no: 1
                },
                Param::Origin { sketch: 1, axis: 0 },
            ]
        );
        assert_eq!(
            p.values()[index_of(&p, Param::Origin { sketch: 1, axis: 2 })],
            1e-5
        );
        // Compact form with CRLF line ends and continuation inside parentheses.
        let crlf = HAND_OK.replace('\n', "\r\n").replace(
            "cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\r\nloop0",
            "cq.Vector(1.0, 0.0, 0.0),\r\n    cq.Vector(0.0, 0.0, 1.0)))\r\nloop0",
        );
        let p = Program::parse(&crlf).expect("parses");
        assert_eq!(p.write(&p.values(), false).expect("writes"), crlf);
    }

    #[test]
    fn roles_are_placed() {
        let p = Program::parse(HAND_OK).expect("parses");
        let count = |f: &dyn Fn(&Role) -> bool| p.literals().iter().filter(|l| f(&l.role)).count();
        assert_eq!(count(&|r| matches!(r, Role::Origin { .. })), 9);
        assert_eq!(count(&|r| matches!(r, Role::PlaneAxis { .. })), 18);
        assert_eq!(
            count(&|r| matches!(r, Role::Coord { arc_mid: true, .. })),
            2
        );
        assert_eq!(count(&|r| matches!(r, Role::Radius { .. })), 2);
        assert_eq!(count(&|r| matches!(r, Role::Extrude { .. })), 3);
        let r = p
            .literals()
            .iter()
            .find(|l| {
                l.role
                    == Role::Radius {
                        sketch: 1,
                        loop_no: 2,
                    }
            })
            .expect("radius of loop2");
        assert_eq!(&HAND_OK[r.span.clone()], ".5");
        let neg = p
            .literals()
            .iter()
            .find(|l| l.role == Role::Extrude { solid: 1 })
            .expect("extrude 1");
        assert_eq!(&HAND_OK[neg.span.clone()], "-0.25");
    }

    #[test]
    fn changing_one_extrude_changes_only_that_number() {
        for (id, code) in real_programs()
            .into_iter()
            .chain([("hand".to_string(), HAND_OK.to_string())])
        {
            let p = Program::parse(&code).expect("parses");
            let last_solid = p
                .params()
                .iter()
                .filter_map(|q| match q {
                    Param::Extrude { solid } => Some(*solid),
                    _ => None,
                })
                .max()
                .expect("an extrude");
            let i = index_of(&p, Param::Extrude { solid: last_solid });
            let mut v = p.values();
            v[i] *= 1.5;
            let out = p.write(&v, false).expect("writes");
            let (a, b) = (texts(&code), texts(&out));
            assert_eq!(a.len(), b.len());
            let changed: Vec<usize> = (0..a.len()).filter(|&j| a[j] != b[j]).collect();
            let lit = p.param_literal[i].expect("literal");
            assert_eq!(changed, vec![lit], "{id}");
            assert_eq!(
                b[lit].parse::<f64>().ok(),
                Some(p.values()[i] * 1.5),
                "{id}"
            );
            // Outside the literal, the bytes are the same.
            let span = p.literals()[lit].span.clone();
            assert_eq!(&out[..span.start], &code[..span.start]);
            assert_eq!(&out[span.start + b[lit].len()..], &code[span.end..]);
            assert!(out.contains("both=True") == code.contains("both=True"));
        }
    }

    #[test]
    fn scale_multiplies_one_sketch_only() {
        let p = Program::parse(HAND_OK).expect("parses");
        let i = index_of(&p, Param::Scale { sketch: 0 });
        let mut v = p.values();
        v[i] = 2.0;
        let out = p.write(&v, false).expect("writes");
        let q = Program::parse(&out).expect("reparses");
        for (a, b) in p.literals().iter().zip(q.literals()) {
            assert_eq!(a.role, b.role);
            let in_sketch0 = matches!(
                a.role,
                Role::Coord { sketch: 0, .. } | Role::Radius { sketch: 0, .. }
            );
            if in_sketch0 {
                assert_eq!(b.value, a.value * 2.0, "{:?}", a.role);
            } else {
                assert_eq!(b.value.to_bits(), a.value.to_bits(), "{:?}", a.role);
            }
        }
        // Scale and radius compose: radius param 0.2, scale 2 -> written 0.4.
        let r = index_of(
            &p,
            Param::Radius {
                sketch: 0,
                loop_no: 1,
            },
        );
        v[r] = 0.2;
        let q = Program::parse(&p.write(&v, false).expect("writes")).expect("reparses");
        let lit = q
            .literals()
            .iter()
            .find(|l| {
                l.role
                    == Role::Radius {
                        sketch: 0,
                        loop_no: 1,
                    }
            })
            .expect("radius");
        assert_eq!(lit.value, 0.4);
    }

    #[test]
    fn scale_recovery_on_real_samples() {
        let mut ok = 0;
        let mut total = 0;
        let mut compact_same = 0;
        let mut decimals_same = 0;
        for (id, code) in real_programs() {
            let p = Program::parse(&code).expect("parses");
            let c = Program::parse(&compact(&code)).expect("compact parses");
            for sk in 0..p.sketch_count() {
                total += 1;
                let s = p.sketch_scale(sk);
                if let Some(s) = s {
                    ok += 1;
                    assert!(s > 0.0 && s <= 2.0);
                }
                if s.is_some() && c.sketch_scale(sk) == s {
                    compact_same += 1;
                }
                println!(
                    "{id} sketch {sk}: s = {s:?}, compact s = {:?}",
                    c.sketch_scale(sk)
                );
            }
            // Quantised writing at unchanged values keeps a grid program as it is.
            assert_eq!(p.write(&p.values(), true).expect("writes"), code, "{id}");
            // ... and restores the exact grid numbers of a rounded one (not arc middles).
            let restored = c.write(&c.values(), true).expect("writes");
            let r = Program::parse(&restored).expect("reparses");
            for (a, b) in p.literals().iter().zip(r.literals()) {
                assert_eq!(a.role, b.role, "{id}");
                let on_grid = !matches!(a.role, Role::Coord { arc_mid: true, .. })
                    && !matches!(a.role, Role::PlaneAxis { .. });
                if on_grid {
                    assert_eq!(a.value, b.value, "{id} {:?}", a.role);
                }
            }
            let d = Program::parse(&four_decimals(&code)).expect("4-decimal form parses");
            for sk in 0..p.sketch_count() {
                if d.sketch_scale(sk).is_some() && d.sketch_scale(sk) == p.sketch_scale(sk) {
                    decimals_same += 1;
                }
                println!(
                    "{id} sketch {sk}: 4-decimal form s = {:?}",
                    d.sketch_scale(sk)
                );
            }
        }
        println!(
            "recovered {ok}/{total}; the same s from the compact form for {compact_same}, \
             from the 4-decimal form for {decimals_same}"
        );
        assert_eq!((ok, total), (15, 15));
        assert_eq!(compact_same, 15);
        assert_eq!(decimals_same, 15);
    }

    #[test]
    fn scale_recovery_on_random_grid_sketches() {
        // Sketches of 3..10 points with k in [0, 95] (95 present, as DeepCAD normalises a
        // profile's larger side to 95 units), one circle, s random.
        let mut rng = seeded::Rng::new(0x9e37_79b9, 1);
        let mut next = |n: u64| rng.below(n as usize) as u64;
        let (mut exact, mut compact_ok, trials) = (0, 0, 400);
        for _ in 0..trials {
            let m = 4 + next(253) as u32;
            let unit = f64::from(m) / 128.0 / 95.0;
            let n = 3 + next(8);
            let mut pts = vec![(95i64, next(96) as i64)];
            for _ in 0..n {
                pts.push((next(96) as i64, next(96) as i64));
            }
            let mut code = format!(
                "wp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nloop0=wp_sketch0.moveTo({}, {})",
                py_float(pts[0].0 as f64 * unit),
                py_float(pts[0].1 as f64 * unit)
            );
            for p in &pts[1..] {
                code += &format!(
                    ".lineTo({}, {})",
                    py_float(p.0 as f64 * unit),
                    py_float(p.1 as f64 * unit)
                );
            }
            code += &format!(
                ".close()\nloop1=wp_sketch0.moveTo({}, {}).circle({})\nsolid0=wp_sketch0.add(loop0).add(loop1).extrude(0.125)\n",
                py_float(40.0 * unit),
                py_float(50.0 * unit),
                py_float((1 + next(30)) as f64 * unit)
            );
            let want = Some(f64::from(m) / 128.0);
            let p = Program::parse(&code).expect("parses");
            exact += usize::from(p.sketch_scale(0) == want);
            let c = Program::parse(&compact(&code)).expect("compact parses");
            compact_ok += usize::from(c.sketch_scale(0) == want);
        }
        println!("random sketches: exact {exact}/{trials}, compact {compact_ok}/{trials}");
        assert_eq!(exact, trials);
        assert!(compact_ok * 100 >= trials * 95, "{compact_ok}/{trials}");
    }

    #[test]
    fn recovered_scales_match_the_known_ones() {
        let rows = real_programs();
        let code = &rows
            .iter()
            .find(|(id, _)| id == "00442545")
            .expect("sample")
            .1;
        let p = Program::parse(code).expect("parses");
        assert_eq!(p.sketch_scale(0), Some(1.5));
        assert_eq!(p.sketch_scale(1), Some(0.3046875));
        // A sketch off every grid is not quantisable.
        let off = HAND_OK.replace("moveTo(0.1, 0.0)", "moveTo(0.123456789012345, 0.0)");
        let p = Program::parse(&off).expect("parses");
        assert_eq!(p.sketch_scale(2), None);
    }

    #[test]
    fn quantise_snaps_to_the_grids() {
        let rows = real_programs();
        let code = &rows
            .iter()
            .find(|(id, _)| id == "00442545")
            .expect("sample")
            .1;
        let p = Program::parse(code).expect("parses");
        let mut v = p.values();
        let ox = index_of(&p, Param::Origin { sketch: 0, axis: 0 });
        let e0 = index_of(&p, Param::Extrude { solid: 0 });
        let e1 = index_of(&p, Param::Extrude { solid: 1 });
        let e2 = index_of(&p, Param::Extrude { solid: 2 });
        let s0 = index_of(&p, Param::Scale { sketch: 0 });
        let r = index_of(
            &p,
            Param::Radius {
                sketch: 0,
                loop_no: 1,
            },
        );
        v[ox] = 0.3;
        v[e0] = 0.001; // snaps to 0 -> min 1/128
        v[e1] = -0.0001; // snaps to -0 -> -1/128
        v[e2] = 7.0; // clamped to 1
        v[s0] = 1.1; // s = 1.5 -> 1.65 -> 211/128
        v[r] = 0.06; // k = round(0.06 * 95 / 1.5) = 4
        let q = Program::parse(&p.write(&v, true).expect("writes")).expect("reparses");
        let val = |role: Role| {
            q.literals()
                .iter()
                .find(|l| l.role == role)
                .map(|l| l.value)
                .expect("literal")
        };
        assert_eq!(val(Role::Origin { sketch: 0, axis: 0 }), 38.0 / 128.0);
        assert_eq!(val(Role::Extrude { solid: 0 }), 1.0 / 128.0);
        assert_eq!(val(Role::Extrude { solid: 1 }), -1.0 / 128.0);
        assert_eq!(val(Role::Extrude { solid: 2 }), 1.0);
        let unit = (211.0 / 128.0) / 95.0;
        assert_eq!(
            val(Role::Radius {
                sketch: 0,
                loop_no: 1
            }),
            4.0 * unit
        );
        assert_eq!(
            val(Role::Radius {
                sketch: 0,
                loop_no: 2
            }),
            3.0 * unit
        );
        assert_eq!(q.sketch_scale(0), Some(211.0 / 128.0));
        for l in q.literals() {
            if let Role::Coord { sketch: 0, .. } = l.role {
                let k = l.value / unit;
                assert!((k - k.round()).abs() < 1e-9, "{}", l.value);
            }
        }
        // Other sketches unchanged.
        for (a, b) in p.literals().iter().zip(q.literals()) {
            if matches!(a.role, Role::Coord { sketch: 1 | 2, .. }) {
                assert_eq!(a.value, b.value);
            }
        }
        // Scale can never leave (0, 2] when quantising.
        v[s0] = 100.0;
        let q = Program::parse(&p.write(&v, true).expect("writes")).expect("reparses");
        assert_eq!(q.sketch_scale(0), Some(2.0));
    }

    #[test]
    fn out_of_range_values_are_clamped() {
        let p = Program::parse(HAND_OK).expect("parses");
        let mut v = p.values();
        for (q, x) in p.params().iter().zip(v.iter_mut()) {
            *x = match q {
                Param::Scale { .. } => -3.0,
                Param::Radius { .. } => -1.0,
                Param::Extrude { .. } => 0.0,
                Param::Origin { .. } => f64::NAN,
            };
        }
        let out = p.write(&v, false).expect("writes");
        assert!(!out.contains("NaN") && !out.contains("inf"));
        let q = Program::parse(&out).expect("reparses");
        for (a, b) in p.literals().iter().zip(q.literals()) {
            match b.role {
                Role::Origin { .. } | Role::PlaneAxis { .. } => assert_eq!(a.value, b.value),
                Role::Radius { .. } => assert_eq!(b.value, MIN_RADIUS * SCALE_RANGE.0),
                Role::Extrude { .. } => {
                    assert_eq!(b.value.abs(), MIN_EXTRUDE);
                    assert_eq!(b.value < 0.0, a.value < 0.0);
                }
                Role::Coord { .. } => assert_eq!(b.value, a.value * SCALE_RANGE.0),
            }
        }
        assert!(matches!(
            p.write(&v[1..], false),
            Err(ParamError::ValueCount { .. })
        ));
    }

    #[test]
    fn writes_python_floats() {
        for (x, s) in [
            (1e-5, "1e-05"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (-0.75, "-0.75"),
            (2.0, "2.0"),
            (-0.0, "0.0"),
            (1e16, "1e+16"),
            (123456.0, "123456.0"),
            (0.1 + 0.2, "0.30000000000000004"),
            (6.123233995736766e-17, "6.123233995736766e-17"),
        ] {
            assert_eq!(py_float(x), s);
            assert_eq!(s.parse::<f64>().ok(), Some(x + 0.0));
        }
    }

    #[test]
    fn spelling_counts_decimals_and_digits() {
        assert_eq!(spelling("0.04737"), (5, 4));
        assert_eq!(spelling("1.5e-05"), (6, 2));
        assert_eq!(spelling("-0.75"), (2, 2));
        assert_eq!(spelling("2"), (0, 1));
        assert_eq!(spelling("0.0"), (1, 0));
    }

    #[test]
    fn errors_on_non_dialect_code() {
        let err = |c: &str| Program::parse(c).expect_err(c);
        assert_eq!(
            err("import cadquery as cq\nsolid=None\n"),
            ParamError::NoSketch
        );
        assert_eq!(err(""), ParamError::NoSketch);
        assert!(matches!(
            err(
                "wp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(0, 0, 0), cq.Vector(1, 0, 0), cq.Vector(0, 0, 1)))\nloop0=wp_sketch0.moveTo(0.0, 0.0).circle(1.0)\n"
            ),
            ParamError::NoExtrude
        ));
        let e = err("result = cq.Workplane('XY').box(1.0, 2.0, 3.0)\n");
        assert!(
            matches!(&e, ParamError::UnplacedNumber { line: 1, text, .. } if text == "1.0"),
            "{e}"
        );
        assert!(
            e.to_string().contains("cannot place the number `1.0`"),
            "{e}"
        );
        // A number in an unknown method of a sketch chain.
        let code = HAND_OK.replace(".close()\nloop1", ".close().fillet(0.1)\nloop1");
        assert!(matches!(
            err(&code),
            ParamError::UnplacedNumber { line: 2, .. }
        ));
        // A loop on an undefined sketch.
        let code = HAND_OK.replace("loop1=wp_sketch0", "loop1=wp_sketch9");
        assert!(matches!(
            err(&code),
            ParamError::UnplacedNumber { line: 3, .. }
        ));
        // Two circles in one loop statement.
        let code = HAND_OK.replace(".circle(0.1579)", ".circle(0.1579).circle(0.2)");
        assert!(matches!(err(&code), ParamError::UnplacedNumber { .. }));
        // Arithmetic and syntax errors.
        assert!(matches!(err(HAND), ParamError::Syntax { line: 10, .. }));
        assert!(matches!(err("x = (1.0\n"), ParamError::Syntax { .. }));
        assert!(matches!(err("x = 1.0.5\n"), ParamError::Syntax { .. }));
        assert!(matches!(err("x = [1]\n"), ParamError::Syntax { .. }));
        assert!(err("x = 1 +\n").to_string().starts_with("line 1, column 7"));
    }
}
