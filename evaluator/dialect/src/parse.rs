//! Parser of the dialect: a small lexer of the Python subset the dataset writes, then one
//! statement per line (`import`, comments, `wp_sketchN = cq.Workplane(..)`, `loopK=..`,
//! `solidN=..extrude(..)`, `solid=..`). Names may be any identifiers; their references are
//! checked.

use std::collections::HashMap;

use crate::ast::{Extrude, Loop, Op, Plane, Program, Seg, Sketch, P2};

/// Largest program accepted, in bytes: far above the dataset's longest (~4 100 chars).
pub const MAX_CODE_BYTES: usize = 1 << 20;

/// Why a text is not a program of the dialect; `line` counts from 1.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    #[error("program is {0} bytes, more than the {MAX_CODE_BYTES} accepted")]
    TooLong(usize),
    #[error("line {line}: unexpected character {found:?}")]
    BadChar { line: usize, found: char },
    #[error("line {line}: bad number {text:?}")]
    BadNumber { line: usize, text: String },
    #[error("line {line}: expected {expected}, found {found}")]
    Expected {
        line: usize,
        expected: &'static str,
        found: String,
    },
    #[error("line {line}: `{name}` is not defined before use")]
    Undefined { line: usize, name: String },
    #[error("line {line}: `{name}` is {problem}")]
    Misuse {
        line: usize,
        name: String,
        problem: &'static str,
    },
    #[error("no sketch: the program builds no solid")]
    Empty,
    #[error("the program never assigns `solid`")]
    NoResult,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Num(f64),
    Punct(char),
    Newline,
}

fn describe(t: Option<&Tok>) -> String {
    match t {
        None => "end of program".into(),
        Some(Tok::Ident(s)) => format!("`{s}`"),
        Some(Tok::Num(x)) => format!("number {x}"),
        Some(Tok::Punct(c)) => format!("`{c}`"),
        Some(Tok::Newline) => "end of line".into(),
    }
}

fn lex(code: &str) -> Result<Vec<(Tok, usize)>, ParseError> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\n' => {
                out.push((Tok::Newline, line));
                line += 1;
                i += 1;
            }
            b' ' | b'\t' | b'\r' => i += 1,
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'(' | b')' | b',' | b'.' | b'=' | b'-' | b'+'
                if !(c == b'.' && i + 1 < b.len() && b[i + 1].is_ascii_digit()) =>
            {
                out.push((Tok::Punct(c as char), line));
                i += 1;
            }
            b'0'..=b'9' | b'.' => {
                let n = crate::pyfloat::literal_len(b, i);
                let text = &code[i..i + n];
                let v: f64 = text.parse().map_err(|_| ParseError::BadNumber {
                    line,
                    text: text.to_string(),
                })?;
                out.push((Tok::Num(v), line));
                i += n;
                if i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    return Err(ParseError::BadNumber {
                        line,
                        text: code[i - n..=i].to_string(),
                    });
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                out.push((Tok::Ident(code[start..i].to_string()), line));
            }
            _ => {
                let found = code[i..].chars().next().unwrap_or('?');
                return Err(ParseError::BadChar { line, found });
            }
        }
    }
    out.push((Tok::Newline, line));
    Ok(out)
}

struct Cursor {
    toks: Vec<(Tok, usize)>,
    pos: usize,
}

impl Cursor {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.0)
    }

    fn line(&self) -> usize {
        self.toks
            .get(self.pos)
            .or(self.toks.last())
            .map_or(1, |t| t.1)
    }

    fn fail<T>(&self, expected: &'static str) -> Result<T, ParseError> {
        Err(ParseError::Expected {
            line: self.line(),
            expected,
            found: describe(self.peek()),
        })
    }

    fn punct(&mut self, c: char) -> Result<(), ParseError> {
        if self.peek() == Some(&Tok::Punct(c)) {
            self.pos += 1;
            Ok(())
        } else {
            self.fail(match c {
                '(' => "`(`",
                ')' => "`)`",
                ',' => "`,`",
                '.' => "`.`",
                '=' => "`=`",
                _ => "punctuation",
            })
        }
    }

    fn eat_punct(&mut self, c: char) -> bool {
        let hit = self.peek() == Some(&Tok::Punct(c));
        if hit {
            self.pos += 1;
        }
        hit
    }

    fn ident(&mut self) -> Result<String, ParseError> {
        match self.peek() {
            Some(Tok::Ident(s)) => {
                let s = s.clone();
                self.pos += 1;
                Ok(s)
            }
            _ => self.fail("a name"),
        }
    }

    fn keyword(&mut self, word: &'static str) -> Result<(), ParseError> {
        match self.peek() {
            Some(Tok::Ident(s)) if s == word => {
                self.pos += 1;
                Ok(())
            }
            _ => self.fail(word),
        }
    }

    fn number(&mut self) -> Result<f64, ParseError> {
        let mut sign = 1.0;
        loop {
            if self.eat_punct('-') {
                sign = -sign;
            } else if !self.eat_punct('+') {
                break;
            }
        }
        match self.peek() {
            Some(Tok::Num(x)) => {
                let x = *x;
                self.pos += 1;
                Ok(sign * x)
            }
            _ => self.fail("a number"),
        }
    }

    fn pair(&mut self) -> Result<P2, ParseError> {
        let x = self.number()?;
        self.punct(',')?;
        Ok([x, self.number()?])
    }

    /// `(x, y)` as a tuple argument.
    fn tuple(&mut self) -> Result<P2, ParseError> {
        self.punct('(')?;
        let p = self.pair()?;
        self.punct(')')?;
        Ok(p)
    }

    /// `cq.Vector(a, b, c)`.
    fn vector(&mut self) -> Result<[f64; 3], ParseError> {
        self.keyword("cq")?;
        self.punct('.')?;
        self.keyword("Vector")?;
        self.punct('(')?;
        let a = self.number()?;
        self.punct(',')?;
        let b = self.number()?;
        self.punct(',')?;
        let c = self.number()?;
        self.punct(')')?;
        Ok([a, b, c])
    }

    fn end_of_line(&mut self) -> Result<(), ParseError> {
        match self.peek() {
            Some(Tok::Newline) => {
                self.pos += 1;
                Ok(())
            }
            _ => self.fail("end of line"),
        }
    }

    /// `.method(` after a value; returns the method name.
    fn method(&mut self) -> Result<String, ParseError> {
        self.punct('.')?;
        let m = self.ident()?;
        self.punct('(')?;
        Ok(m)
    }
}

/// What a name stands for while parsing.
#[derive(Debug, Clone)]
enum Value {
    Workplane(usize),
    Loop { sketch: usize, lp: Loop, used: bool },
    Solid(usize),
}

struct Partial {
    plane: Plane,
    extrude: Option<(Extrude, Vec<Loop>)>,
    op: Option<Op>,
}

/// Parse a program of the dialect. Accepts any names and spacing; refuses anything the
/// dialect does not say (other methods, a solid combined twice or never, a loop never added).
pub fn parse(code: &str) -> Result<Program, ParseError> {
    if code.len() > MAX_CODE_BYTES {
        return Err(ParseError::TooLong(code.len()));
    }
    let mut c = Cursor {
        toks: lex(code)?,
        pos: 0,
    };
    let mut names: HashMap<String, Value> = HashMap::new();
    let mut sketches: Vec<Partial> = Vec::new();
    let mut has_result = false;
    while c.peek().is_some() {
        match c.peek() {
            Some(Tok::Newline) => {
                c.pos += 1;
                continue;
            }
            Some(Tok::Ident(s)) if s == "import" => {
                c.pos += 1;
                c.keyword("cadquery")?;
                c.keyword("as")?;
                c.keyword("cq")?;
                c.end_of_line()?;
                continue;
            }
            _ => {}
        }
        let line = c.line();
        let target = c.ident()?;
        c.punct('=')?;
        let first = c.ident()?;
        if target == "solid" {
            let op = if first == "solid" {
                let m = c.method()?;
                let op = match m.as_str() {
                    "union" => Op::Union,
                    "cut" => Op::Cut,
                    _ => {
                        c.pos -= 2;
                        return c.fail("`union` or `cut`");
                    }
                };
                if !has_result {
                    return Err(ParseError::Undefined {
                        line,
                        name: "solid".into(),
                    });
                }
                let name = c.ident()?;
                c.punct(')')?;
                (op, name)
            } else {
                if has_result {
                    return Err(ParseError::Misuse {
                        line,
                        name: "solid".into(),
                        problem: "assigned a second time instead of combined",
                    });
                }
                (Op::First, first)
            };
            c.end_of_line()?;
            let s = match names.get(&op.1) {
                Some(Value::Solid(s)) => *s,
                Some(_) => {
                    return Err(ParseError::Misuse {
                        line,
                        name: op.1,
                        problem: "not a solid",
                    })
                }
                None => return Err(ParseError::Undefined { line, name: op.1 }),
            };
            let expected = sketches.iter().filter(|p| p.op.is_some()).count();
            if sketches[s].op.is_some() || s != expected {
                return Err(ParseError::Misuse {
                    line,
                    name: op.1,
                    problem: "combined out of program order or twice",
                });
            }
            sketches[s].op = Some(op.0);
            has_result = true;
            continue;
        }
        if first == "cq" {
            c.punct('.')?;
            c.keyword("Workplane")?;
            c.punct('(')?;
            c.keyword("cq")?;
            c.punct('.')?;
            c.keyword("Plane")?;
            c.punct('(')?;
            let origin = c.vector()?;
            c.punct(',')?;
            let x_dir = c.vector()?;
            c.punct(',')?;
            let normal = c.vector()?;
            c.punct(')')?;
            c.punct(')')?;
            c.end_of_line()?;
            define(&mut names, &target, Value::Workplane(sketches.len()), line)?;
            sketches.push(Partial {
                plane: Plane {
                    origin,
                    x_dir,
                    normal,
                },
                extrude: None,
                op: None,
            });
            continue;
        }
        let sketch = match names.get(&first) {
            Some(Value::Workplane(s)) => *s,
            Some(_) => {
                return Err(ParseError::Misuse {
                    line,
                    name: first,
                    problem: "not a workplane",
                })
            }
            None => return Err(ParseError::Undefined { line, name: first }),
        };
        let m = c.method()?;
        match m.as_str() {
            "moveTo" => {
                let start = c.pair()?;
                c.punct(')')?;
                let lp = path_or_circle(&mut c, start)?;
                c.end_of_line()?;
                define(
                    &mut names,
                    &target,
                    Value::Loop {
                        sketch,
                        lp,
                        used: false,
                    },
                    line,
                )?;
            }
            "add" => {
                if sketches[sketch].extrude.is_some() {
                    return Err(ParseError::Misuse {
                        line,
                        name: first,
                        problem: "extruded a second time",
                    });
                }
                let mut loops = Vec::new();
                let mut m = m;
                while m == "add" {
                    let name = c.ident()?;
                    c.punct(')')?;
                    match names.get_mut(&name) {
                        Some(Value::Loop {
                            sketch: s,
                            lp,
                            used,
                        }) if *s == sketch && !*used => {
                            *used = true;
                            loops.push(lp.clone());
                        }
                        Some(_) => {
                            return Err(ParseError::Misuse {
                                line,
                                name,
                                problem: "not an unused loop of this workplane",
                            })
                        }
                        None => return Err(ParseError::Undefined { line, name }),
                    }
                    m = c.method()?;
                }
                if m != "extrude" {
                    c.pos -= 2;
                    return c.fail("`add` or `extrude`");
                }
                let distance = c.number()?;
                let mut both = false;
                if c.eat_punct(',') {
                    c.keyword("both")?;
                    c.punct('=')?;
                    match c.ident()?.as_str() {
                        "True" => both = true,
                        "False" => {}
                        _ => {
                            c.pos -= 1;
                            return c.fail("True or False");
                        }
                    }
                }
                c.punct(')')?;
                c.end_of_line()?;
                sketches[sketch].extrude = Some((Extrude { distance, both }, loops));
                define(&mut names, &target, Value::Solid(sketch), line)?;
            }
            _ => {
                c.pos -= 2;
                return c.fail("`moveTo` or `add`");
            }
        }
    }
    if let Some((name, _)) = names
        .iter()
        .find(|(_, v)| matches!(v, Value::Loop { used: false, .. }))
    {
        return Err(ParseError::Misuse {
            line: c.line(),
            name: name.clone(),
            problem: "a loop never added to a solid",
        });
    }
    if sketches.is_empty() {
        return Err(ParseError::Empty);
    }
    if !has_result {
        return Err(ParseError::NoResult);
    }
    let mut out = Vec::with_capacity(sketches.len());
    for (n, p) in sketches.into_iter().enumerate() {
        let (Some((extrude, loops)), Some(op)) = (p.extrude, p.op) else {
            return Err(ParseError::Misuse {
                line: c.line(),
                name: format!("sketch {n}"),
                problem: "never extruded and combined into `solid`",
            });
        };
        out.push(Sketch {
            plane: p.plane,
            loops,
            extrude,
            op,
        });
    }
    Ok(Program { sketches: out })
}

fn define(
    names: &mut HashMap<String, Value>,
    name: &str,
    v: Value,
    line: usize,
) -> Result<(), ParseError> {
    if names.contains_key(name) || name == "cq" || name == "solid" {
        return Err(ParseError::Misuse {
            line,
            name: name.to_string(),
            problem: "defined a second time",
        });
    }
    names.insert(name.to_string(), v);
    Ok(())
}

/// The rest of a loop after `moveTo(start)`.
fn path_or_circle(c: &mut Cursor, start: P2) -> Result<Loop, ParseError> {
    let mut segs = Vec::new();
    loop {
        let m = c.method()?;
        match m.as_str() {
            "circle" if segs.is_empty() => {
                let radius = c.number()?;
                c.punct(')')?;
                return Ok(Loop::Circle {
                    centre: start,
                    radius,
                });
            }
            "lineTo" => {
                let p = c.pair()?;
                c.punct(')')?;
                segs.push(Seg::Line(p));
            }
            "threePointArc" => {
                let mid = c.tuple()?;
                c.punct(',')?;
                let end = c.tuple()?;
                c.punct(')')?;
                segs.push(Seg::Arc { mid, end });
            }
            "close" if !segs.is_empty() => {
                c.punct(')')?;
                return Ok(Loop::Path { start, segs });
            }
            _ => {
                c.pos -= 2;
                return c.fail("`lineTo`, `threePointArc`, `close` or `circle`");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ast::Role;

    const SAMPLE: &str = "import cadquery as cq\n# Generating a workplane for sketch 0\nwp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(-0.5234375, -0.75, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nloop0=wp_sketch0.moveTo(1.0421052631578949, 0.0).lineTo(1.0421052631578949, 1.5).lineTo(0.0, 1.5).lineTo(0.0, 0.0).close()\nloop1=wp_sketch0.moveTo(0.5210526315789474, 0.1736842105263158).circle(0.04736842105263158)\nsolid0=wp_sketch0.add(loop0).add(loop1).extrude(0.546875)\nsolid=solid0\n# Generating a workplane for sketch 1\nwp_sketch1 = cq.Workplane(cq.Plane(cq.Vector(-0.1484375, 0.75, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nloop2=wp_sketch1.moveTo(0.0, -0.15394736842105264).threePointArc((0.15074013157894736, -0.3046875), (0.3014802631578947, -0.15394736842105264)).lineTo(0.3014802631578947, 0.0).lineTo(0.0, 0.0).close()\nsolid1=wp_sketch1.add(loop2).extrude(-0.4765625, both=True)\nsolid=solid.cut(solid1)\n";

    #[test]
    fn sample_round_trips_byte_for_byte() {
        let p = parse(SAMPLE).unwrap();
        assert_eq!(p.sketch_count(), 2);
        assert_eq!(p.sketches[1].op, Op::Cut);
        assert!(p.sketches[1].extrude.both);
        assert_eq!(p.sketches[0].loops.len(), 2);
        assert_eq!(p.code(), SAMPLE);
    }

    #[test]
    fn numbers_can_be_rewritten() {
        let mut p = parse(SAMPLE).unwrap();
        let n = p.numbers();
        assert_eq!(n.len(), p.numbers_mut().len());
        let radius = n
            .iter()
            .position(|(r, _)| matches!(r, Role::Radius { .. }))
            .unwrap();
        assert_eq!(n[radius].1, 0.04736842105263158);
        *p.numbers_mut()[radius].1 = 0.25;
        assert!(p.code().contains(".circle(0.25)"));
        assert_eq!(
            n.last().unwrap().0,
            Role::Extrude { sketch: 1 },
            "the last number is the last extrude"
        );
    }

    #[test]
    fn errors_name_the_line_and_the_problem() {
        let bad = |code: &str| parse(code).unwrap_err();
        assert!(matches!(bad(""), ParseError::Empty));
        let undefined = SAMPLE.replace("add(loop2)", "add(loop9)");
        assert_eq!(
            bad(&undefined),
            ParseError::Undefined {
                line: 11,
                name: "loop9".into()
            }
        );
        let other = SAMPLE.replace(".circle(", ".rect(");
        assert!(matches!(bad(&other), ParseError::Expected { line: 5, .. }));
        let twice = SAMPLE.replace("solid=solid.cut(solid1)", "solid=solid.cut(solid0)");
        assert!(matches!(bad(&twice), ParseError::Misuse { line: 12, .. }));
        let unused = SAMPLE.replace(".add(loop1)", "");
        assert!(matches!(bad(&unused), ParseError::Misuse { .. }));
        assert!(matches!(
            bad("import os\n"),
            ParseError::Expected { line: 1, .. }
        ));
        assert!(matches!(bad("x = 1e5q\n"), ParseError::BadNumber { .. }));
        assert!(matches!(bad("x = \"a\"\n"), ParseError::BadChar { .. }));
        let no_result = SAMPLE
            .replace("solid=solid0\n", "")
            .replace("solid=solid.cut(solid1)\n", "");
        assert_eq!(bad(&no_result), ParseError::NoResult);
    }

    #[test]
    fn spacing_names_and_signs_are_free() {
        let code = "import cadquery as cq\nwp = cq.Workplane( cq.Plane(cq.Vector(0, 0, 0), cq.Vector(1, 0, 0), cq.Vector(0, 0, 1)) )\nouter = wp.moveTo(-1, -1).lineTo(1, -1).lineTo(1, 1).close()\nbody = wp.add(outer).extrude(+.5)\nsolid = body\n";
        let p = parse(code).unwrap();
        assert_eq!(p.sketches[0].extrude.distance, 0.5);
        let printed = p.code();
        assert!(printed.contains("loop0=wp_sketch0.moveTo(-1.0, -1.0).lineTo(1.0, -1.0)"));
        assert_eq!(parse(&printed).unwrap(), p);
    }
}
