//! Constrained decoding for the compact dialect of [`crate::compact`]: a byte-level recogniser
//! of valid program prefixes ([`DialectState`]) and a vocabulary mask built on it
//! ([`TokenMask`]), so that every finished generation parses and all its names are consistent.
//!
//! The dialect, one statement per line, each line ending in `\n`:
//!
//! ```text
//! Program  := Sketch+                                   (at most 32 sketches)
//! Sketch n := wp_sketch{n} = cq.Workplane(cq.Plane(cq.Vector(N, N, N), cq.Vector(N, N, N), cq.Vector(N, N, N)))
//!             Loop+                                     (loop numbers k global: 0, 1, 2, ...; at most 1024)
//!             solid{n}=wp_sketch{n}.add(loop{k})...     (exactly this sketch's loops, in order)
//!                 .extrude(N) | .extrude(N, both=True)
//!             solid=solid0 (n == 0) | solid=solid.union(solid{n}) | solid=solid.cut(solid{n})
//! Loop     := loop{k}=wp_sketch{n}.moveTo(N, N) then .circle(N)
//!             or (.lineTo(N, N) | .threePointArc((N, N), (N, N)))+ .close()
//!             (a chain of a single lineTo may not close: its face would be degenerate)
//! N        := -?(0|[1-9][0-9]{0,3})\.[0-9]+
//!             (the compact form's decimals: always a point, no exponent, at most 4 integer
//!             and 10 digits in all; no leading zero, which Python 3 rejects in `01`)
//! ```
//!
//! The program is complete right after a combine line's `\n`. Every state the recogniser
//! accepts can still be completed, so a mask never leaves decoding without a legal token.

/// Most sketches a program may have.
pub const MAX_SKETCHES: u16 = 32;
/// Most loops a program may have, over all its sketches.
pub const MAX_LOOPS: u16 = 1024;
/// Most digits of a number (integer and fraction together).
pub const MAX_DIGITS: u8 = 10;
/// Most integer digits of a number: DeepCAD parts live in a few units, and a bounded number
/// keeps a sampled 1e300 out of the generated code.
pub const MAX_INTEGER_DIGITS: u8 = 4;

/// Which counter a name's number must equal.
#[derive(Clone, Copy, Debug)]
enum Var {
    /// The current sketch, n.
    Sketch,
    /// The next loop to define, k.
    Loop,
    /// The next loop of this sketch to `.add`.
    Add,
}

/// When an alternative of a [`Item::Choice`] is open.
#[derive(Clone, Copy, Debug)]
enum Cond {
    Always,
    /// Another loop fits under [`MAX_LOOPS`].
    MoreLoops,
    /// The chain so far may close (not a single lineTo).
    CanClose,
    /// Some loop of this sketch is not added yet.
    AddsLeft,
    /// Every loop of this sketch is added.
    NoAddsLeft,
    /// The current sketch is sketch 0.
    FirstSketch,
    /// The current sketch is not sketch 0.
    LaterSketch,
    /// Another sketch (with its loop) fits under the caps.
    MoreSketches,
}

/// Bookkeeping done between two items, consuming no byte.
#[derive(Clone, Copy, Debug)]
enum Act {
    /// A loop line ended: count it, reset the chain.
    LoopDone,
    /// A lineTo segment ended.
    SegLine,
    /// A threePointArc segment ended.
    SegArc,
    /// An `.add(loop{k})` ended.
    AddDone,
    /// A new sketch starts.
    NewSketch,
}

/// One alternative of a choice: a literal, open under `cond`, then on to item `to`.
#[derive(Debug)]
struct Alt {
    cond: Cond,
    lit: &'static [u8],
    to: u8,
}

/// One step of the dialect's program; unless it jumps, the next item follows it.
#[derive(Debug)]
enum Item {
    /// Exactly these bytes.
    Lit(&'static [u8]),
    /// The decimal digits of a counter.
    Name(Var),
    /// A number N; it ends at the first byte that cannot extend it.
    Num,
    /// One of several literals, told apart byte by byte (none is a prefix of another).
    Choice(&'static [Alt]),
    /// Bookkeeping, no byte.
    Do(Act),
    /// Go to another item, no byte.
    Jump(u8),
}

const A: Cond = Cond::Always;

const START: u8 = 0;
const WP_NAME: u8 = 1;
const LOOP_NAME: u8 = 21;
const CIRCLE: u8 = 29;
const LINE: u8 = 32;
const ARC: u8 = 37;
const SEG_NEXT: u8 = 46;
const LOOP_END: u8 = 47;
const SOLID_NAME: u8 = 49;
const ADDS: u8 = 52;
const ADD_NAME: u8 = 53;
const EXTRUDE: u8 = 57;
const COMBINE: u8 = 59;
const COMBINE_NAME: u8 = 60;
const AFTER_COMBINE: u8 = 62;
const NEW_SKETCH: u8 = 63;
/// The item of a state that has rejected a byte.
const DEAD: u8 = u8::MAX;

/// The dialect as a flat program; the labels above index into it.
static PROG: [Item; 65] = [
    // 0 START
    Item::Lit(b"wp_sketch"),
    // 1 WP_NAME
    Item::Name(Var::Sketch),
    Item::Lit(b" = cq.Workplane(cq.Plane(cq.Vector("),
    Item::Num,
    Item::Lit(b", "),
    Item::Num,
    Item::Lit(b", "),
    Item::Num,
    Item::Lit(b"), cq.Vector("),
    Item::Num,
    // 10
    Item::Lit(b", "),
    Item::Num,
    Item::Lit(b", "),
    Item::Num,
    Item::Lit(b"), cq.Vector("),
    Item::Num,
    Item::Lit(b", "),
    Item::Num,
    Item::Lit(b", "),
    Item::Num,
    // 20
    Item::Lit(b")))\nloop"),
    // 21 LOOP_NAME
    Item::Name(Var::Loop),
    Item::Lit(b"=wp_sketch"),
    Item::Name(Var::Sketch),
    Item::Lit(b".moveTo("),
    Item::Num,
    Item::Lit(b", "),
    Item::Num,
    Item::Choice(&[
        Alt {
            cond: A,
            lit: b").circle(",
            to: CIRCLE,
        },
        Alt {
            cond: A,
            lit: b").lineTo(",
            to: LINE,
        },
        Alt {
            cond: A,
            lit: b").threePointArc((",
            to: ARC,
        },
    ]),
    // 29 CIRCLE
    Item::Num,
    // 30
    Item::Lit(b")\n"),
    Item::Jump(LOOP_END),
    // 32 LINE
    Item::Num,
    Item::Lit(b", "),
    Item::Num,
    Item::Do(Act::SegLine),
    Item::Jump(SEG_NEXT),
    // 37 ARC
    Item::Num,
    Item::Lit(b", "),
    Item::Num,
    // 40
    Item::Lit(b"), ("),
    Item::Num,
    Item::Lit(b", "),
    Item::Num,
    Item::Lit(b")"),
    Item::Do(Act::SegArc),
    // 46 SEG_NEXT
    Item::Choice(&[
        Alt {
            cond: A,
            lit: b").lineTo(",
            to: LINE,
        },
        Alt {
            cond: A,
            lit: b").threePointArc((",
            to: ARC,
        },
        Alt {
            cond: Cond::CanClose,
            lit: b").close()\n",
            to: LOOP_END,
        },
    ]),
    // 47 LOOP_END
    Item::Do(Act::LoopDone),
    Item::Choice(&[
        Alt {
            cond: Cond::MoreLoops,
            lit: b"loop",
            to: LOOP_NAME,
        },
        Alt {
            cond: A,
            lit: b"solid",
            to: SOLID_NAME,
        },
    ]),
    // 49 SOLID_NAME
    Item::Name(Var::Sketch),
    // 50
    Item::Lit(b"=wp_sketch"),
    Item::Name(Var::Sketch),
    // 52 ADDS
    Item::Choice(&[
        Alt {
            cond: Cond::AddsLeft,
            lit: b".add(loop",
            to: ADD_NAME,
        },
        Alt {
            cond: Cond::NoAddsLeft,
            lit: b".extrude(",
            to: EXTRUDE,
        },
    ]),
    // 53 ADD_NAME
    Item::Name(Var::Add),
    Item::Lit(b")"),
    Item::Do(Act::AddDone),
    Item::Jump(ADDS),
    // 57 EXTRUDE
    Item::Num,
    Item::Choice(&[
        Alt {
            cond: A,
            lit: b")\nsolid=solid",
            to: COMBINE,
        },
        Alt {
            cond: A,
            lit: b", both=True)\nsolid=solid",
            to: COMBINE,
        },
    ]),
    // 59 COMBINE
    Item::Choice(&[
        Alt {
            cond: Cond::FirstSketch,
            lit: b"0\n",
            to: AFTER_COMBINE,
        },
        Alt {
            cond: Cond::LaterSketch,
            lit: b".union(solid",
            to: COMBINE_NAME,
        },
        Alt {
            cond: Cond::LaterSketch,
            lit: b".cut(solid",
            to: COMBINE_NAME,
        },
    ]),
    // 60 COMBINE_NAME
    Item::Name(Var::Sketch),
    Item::Lit(b")\n"),
    // 62 AFTER_COMBINE: the program may end here
    Item::Choice(&[Alt {
        cond: Cond::MoreSketches,
        lit: b"wp_sketch",
        to: NEW_SKETCH,
    }]),
    // 63 NEW_SKETCH
    Item::Do(Act::NewSketch),
    Item::Jump(WP_NAME),
];

/// Number phases (in `DialectState::sub` while on an [`Item::Num`]).
mod num {
    pub const START: u8 = 0;
    pub const MINUS: u8 = 1;
    pub const ZERO: u8 = 2;
    pub const INT: u8 = 3;
    pub const DOT: u8 = 4;
    pub const FRAC: u8 = 5;
}

/// What a number does with one more byte.
enum NumStep {
    /// The byte extends the number.
    Took,
    /// The number is complete; the byte belongs to what follows.
    Ended,
    /// The byte can neither extend nor end the number here.
    Reject,
}

/// Where a partial program stands in the dialect; small, `Copy`, no heap, so a decoder can
/// clone it per beam or per candidate token for free.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DialectState {
    /// Current item of [`PROG`], or [`DEAD`].
    item: u8,
    /// Alternative being matched, on a choice.
    alt: u8,
    /// Bytes matched of the current literal or alternative.
    off: u8,
    /// Digits matched of a name, or the phase of a number.
    sub: u8,
    /// Digits of the current number.
    digits: u8,
    /// Chain state of the current loop: 0 no segment, 1 a single lineTo, 2 may close.
    seg: u8,
    /// Current sketch n.
    sketch: u8,
    /// Next loop number k (= loops defined so far).
    loops: u16,
    /// Next loop number to `.add`.
    add: u16,
}

impl Default for DialectState {
    fn default() -> Self {
        Self::start()
    }
}

impl DialectState {
    /// The state before any byte: the program must start with `wp_sketch0`.
    pub fn start() -> Self {
        let mut s = DialectState {
            item: START,
            alt: 0,
            off: 0,
            sub: 0,
            digits: 0,
            seg: 0,
            sketch: 0,
            loops: 0,
            add: 0,
        };
        s.enter(START);
        s
    }

    /// Feeds bytes; false when no program of the dialect has this prefix (the state is then
    /// unspecified, and every later feed fails too).
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        bytes.iter().all(|&b| self.feed_byte(b))
    }

    /// True when the text so far is a complete program.
    pub fn accepts_end(&self) -> bool {
        self.item == AFTER_COMBINE && self.off == 0
    }

    /// True once a feed has failed.
    pub fn is_rejected(&self) -> bool {
        self.item == DEAD
    }

    /// Sketches started so far (the current one included).
    pub fn sketches(&self) -> usize {
        self.sketch as usize + 1
    }

    /// Loops defined so far.
    pub fn loops(&self) -> usize {
        self.loops as usize
    }

    /// Feeds one byte; false (and the state dead) when the prefix leaves the dialect.
    pub fn feed_byte(&mut self, b: u8) -> bool {
        if self.item == DEAD {
            return false;
        }
        let ok = match &PROG[self.item as usize] {
            Item::Lit(lit) => {
                let ok = lit[self.off as usize] == b;
                if ok {
                    self.off += 1;
                    if self.off as usize == lit.len() {
                        self.enter(self.item + 1);
                    }
                }
                ok
            }
            Item::Name(var) => {
                let (d, len) = digit_at(self.value(*var), self.sub);
                let ok = d == b;
                if ok {
                    self.sub += 1;
                    if self.sub == len {
                        self.enter(self.item + 1);
                    }
                }
                ok
            }
            Item::Num => match self.num_step(b) {
                NumStep::Took => true,
                NumStep::Ended => {
                    self.enter(self.item + 1);
                    return self.feed_byte(b);
                }
                NumStep::Reject => false,
            },
            Item::Choice(alts) => {
                let off = self.off as usize;
                let cur = alts[self.alt as usize].lit;
                let found = alts.iter().position(|a| {
                    self.holds(a.cond)
                        && a.lit.len() > off
                        && a.lit[..off] == cur[..off]
                        && a.lit[off] == b
                });
                match found {
                    Some(j) => {
                        self.alt = j as u8;
                        self.off += 1;
                        if self.off as usize == alts[j].lit.len() {
                            self.enter(alts[j].to);
                        }
                        true
                    }
                    None => false,
                }
            }
            Item::Do(_) | Item::Jump(_) => unreachable!("a state never rests on a byte-less item"),
        };
        if !ok {
            self.item = DEAD;
        }
        ok
    }

    /// A short description of what may come next, for error messages.
    pub fn expecting(&self) -> String {
        if self.item == DEAD {
            return "nothing (already rejected)".into();
        }
        match &PROG[self.item as usize] {
            Item::Lit(lit) => format!("{:?}", show(&lit[self.off as usize..])),
            Item::Name(var) => {
                let v = self.value(*var);
                let what = match var {
                    Var::Sketch => "sketch",
                    Var::Loop => "loop",
                    Var::Add => "added loop",
                };
                let text = v.to_string();
                format!("{what} number {v} ({:?} to go)", &text[self.sub as usize..])
            }
            Item::Num => {
                let mut s = "a number".to_string();
                if self.sub == num::FRAC {
                    let mut next = *self;
                    next.enter(self.item + 1);
                    s.push_str(" or ");
                    s.push_str(&next.expecting());
                }
                s
            }
            Item::Choice(alts) => {
                let off = self.off as usize;
                let cur = alts[self.alt as usize].lit;
                let mut open: Vec<String> = alts
                    .iter()
                    .filter(|a| self.holds(a.cond) && a.lit[..off] == cur[..off])
                    .map(|a| format!("{:?}", show(&a.lit[off..])))
                    .collect();
                if self.accepts_end() {
                    open.push("the end".into());
                }
                open.join(" or ")
            }
            Item::Do(_) | Item::Jump(_) => unreachable!("a state never rests on a byte-less item"),
        }
    }

    /// Moves to `item`, doing the byte-less items on the way, and resets the per-item fields.
    fn enter(&mut self, item: u8) {
        self.item = item;
        loop {
            match &PROG[self.item as usize] {
                Item::Do(act) => {
                    self.apply(*act);
                    self.item += 1;
                }
                Item::Jump(to) => self.item = *to,
                _ => break,
            }
        }
        self.alt = 0;
        self.off = 0;
        self.sub = 0;
        self.digits = 0;
    }

    fn apply(&mut self, act: Act) {
        match act {
            Act::LoopDone => {
                self.loops += 1;
                self.seg = 0;
            }
            Act::SegLine => self.seg = if self.seg == 0 { 1 } else { 2 },
            Act::SegArc => self.seg = 2,
            Act::AddDone => self.add += 1,
            Act::NewSketch => self.sketch += 1,
        }
    }

    fn holds(&self, cond: Cond) -> bool {
        match cond {
            Cond::Always => true,
            Cond::MoreLoops => self.loops < MAX_LOOPS,
            Cond::CanClose => self.seg == 2,
            Cond::AddsLeft => self.add < self.loops,
            Cond::NoAddsLeft => self.add == self.loops,
            Cond::FirstSketch => self.sketch == 0,
            Cond::LaterSketch => self.sketch > 0,
            Cond::MoreSketches => (self.sketch as u16) + 1 < MAX_SKETCHES && self.loops < MAX_LOOPS,
        }
    }

    fn value(&self, var: Var) -> u16 {
        match var {
            Var::Sketch => self.sketch as u16,
            Var::Loop => self.loops,
            Var::Add => self.add,
        }
    }

    fn num_step(&mut self, b: u8) -> NumStep {
        use num::*;
        let room = self.digits < MAX_DIGITS;
        match (self.sub, b) {
            (START, b'-') => self.sub = MINUS,
            (START | MINUS, b'0') => {
                self.sub = ZERO;
                self.digits = 1;
            }
            (START | MINUS, b'1'..=b'9') => {
                self.sub = INT;
                self.digits = 1;
            }
            // A dot needs room for the digit that must follow it.
            (ZERO | INT, b'.') if room => self.sub = DOT,
            (INT, b'0'..=b'9') if self.digits < MAX_INTEGER_DIGITS => self.digits += 1,
            (DOT | FRAC, b'0'..=b'9') if room => {
                self.sub = FRAC;
                self.digits += 1;
            }
            (FRAC, _) => return NumStep::Ended,
            _ => return NumStep::Reject,
        }
        NumStep::Took
    }
}

/// The `i`-th decimal digit of `v` (as an ASCII byte) and the number of digits of `v`.
fn digit_at(v: u16, i: u8) -> (u8, u8) {
    let len = if v == 0 { 1 } else { v.ilog10() as u8 + 1 };
    let p = 10u16.pow((len - 1 - i) as u32);
    (b'0' + (v / p % 10) as u8, len)
}

/// Bytes as text for messages.
fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Checks a whole compact program: `Err((byte offset, reason))` at the first byte no program
/// of the dialect has there, or at the end when the program is incomplete.
pub fn parses(program: &str) -> Result<(), (usize, String)> {
    let mut state = DialectState::start();
    for (i, &b) in program.as_bytes().iter().enumerate() {
        let before = state;
        if !state.feed_byte(b) {
            let got = show(&program.as_bytes()[i..(i + 1)]);
            return Err((
                i,
                format!("unexpected {got:?}, expected {}", before.expecting()),
            ));
        }
    }
    if state.accepts_end() {
        Ok(())
    } else {
        Err((
            program.len(),
            format!("unexpected end, expected {}", state.expecting()),
        ))
    }
}

/// One node of the vocabulary trie: its child edges and the tokens that end at it.
#[derive(Clone, Copy, Debug, Default)]
struct TrieNode {
    edges: (u32, u32),
    ids: (u32, u32),
}

/// The vocabulary's tokens as bytes in a byte trie, so the allowed set for a state is
/// computed by one walk that feeds each shared prefix once and prunes dead branches.
#[derive(Clone, Debug)]
pub struct TokenMask {
    /// Node 0 is the root (the empty prefix).
    nodes: Vec<TrieNode>,
    /// (byte, child node), each node's edges contiguous.
    edges: Vec<(u8, u32)>,
    /// Token ids, each node's contiguous.
    ids: Vec<u32>,
    /// Token bytes by id.
    tokens: Vec<Vec<u8>>,
    end_id: u32,
}

impl TokenMask {
    /// `tokens[id]` = the bytes token `id` decodes to; `end_id` = the end-of-text token,
    /// allowed exactly when the state accepts end (whatever its bytes). Tokens with empty
    /// bytes (other special tokens) are never allowed.
    pub fn new(tokens: Vec<Vec<u8>>, end_id: u32) -> Self {
        // Build with per-node maps, then flatten.
        let mut children: Vec<Vec<(u8, u32)>> = vec![Vec::new()];
        let mut ends: Vec<Vec<u32>> = vec![Vec::new()];
        for (id, tok) in tokens.iter().enumerate() {
            if tok.is_empty() || id as u32 == end_id {
                continue;
            }
            let mut node = 0usize;
            for &b in tok {
                node = match children[node].iter().find(|(c, _)| *c == b) {
                    Some(&(_, child)) => child as usize,
                    None => {
                        let child = children.len();
                        children.push(Vec::new());
                        ends.push(Vec::new());
                        children[node].push((b, child as u32));
                        child
                    }
                };
            }
            ends[node].push(id as u32);
        }
        let mut nodes = Vec::with_capacity(children.len());
        let mut edges = Vec::new();
        let mut ids = Vec::new();
        for (mut c, e) in children.into_iter().zip(ends) {
            c.sort_unstable();
            let (es, is) = (edges.len() as u32, ids.len() as u32);
            edges.extend(c);
            ids.extend(e);
            nodes.push(TrieNode {
                edges: (es, edges.len() as u32),
                ids: (is, ids.len() as u32),
            });
        }
        TokenMask {
            nodes,
            edges,
            ids,
            tokens,
            end_id,
        }
    }

    /// Number of token ids the mask covers (the `tokens` given to [`TokenMask::new`]).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// True for an empty vocabulary.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Sets `allowed[id]` for every token id, given the state before the token; entries past
    /// the vocabulary (padding of the model's output layer) are set false, and ids past the
    /// end of a shorter `allowed` are skipped.
    pub fn allowed(&self, state: &DialectState, allowed: &mut [bool]) {
        allowed.fill(false);
        if state.accepts_end() && (self.end_id as usize) < allowed.len() {
            allowed[self.end_id as usize] = true;
        }
        self.walk(0, state, allowed);
    }

    /// Advances `state` by token `id` (the end token leaves it unchanged); false when the
    /// token is not allowed there.
    pub fn feed_token(&self, state: &mut DialectState, id: u32) -> bool {
        if id == self.end_id {
            return state.accepts_end();
        }
        match self.tokens.get(id as usize) {
            Some(tok) if !tok.is_empty() => state.feed(tok),
            _ => false,
        }
    }

    fn walk(&self, node: usize, state: &DialectState, allowed: &mut [bool]) {
        let (from, to) = self.nodes[node].edges;
        for &(b, child) in &self.edges[from as usize..to as usize] {
            let mut next = *state;
            if next.feed_byte(b) {
                let (is, ie) = self.nodes[child as usize].ids;
                for &id in &self.ids[is as usize..ie as usize] {
                    if let Some(a) = allowed.get_mut(id as usize) {
                        *a = true;
                    }
                }
                self.walk(child as usize, &next, allowed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Reference program 0 of the dataset, compacted: 3 sketches, arcs, circles, cuts.
    const REF_CUT: &str = "\
wp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(-0.5234, -0.75, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))
loop0=wp_sketch0.moveTo(1.042, 0.0).lineTo(1.042, 1.5).lineTo(0.0, 1.5).lineTo(0.0, 0.0).close()
loop1=wp_sketch0.moveTo(0.5211, 0.1737).circle(0.04737)
loop2=wp_sketch0.moveTo(0.5211, 1.326).circle(0.04737)
solid0=wp_sketch0.add(loop0).add(loop1).add(loop2).extrude(0.5469)
solid=solid0
wp_sketch1 = cq.Workplane(cq.Plane(cq.Vector(-0.1484, 0.75, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))
loop3=wp_sketch1.moveTo(0.0, -0.1539).threePointArc((0.1507, -0.3047), (0.3015, -0.1539)).lineTo(0.3015, 0.0).lineTo(0.1507, 0.0).lineTo(0.0, 0.0).close()
solid1=wp_sketch1.add(loop3).extrude(0.4766)
solid=solid.cut(solid1)
wp_sketch2 = cq.Workplane(cq.Plane(cq.Vector(-0.1484, -0.75, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))
loop4=wp_sketch2.moveTo(0.1507, 0.0).lineTo(0.3015, 0.0).lineTo(0.3015, 0.1539).threePointArc((0.1507, 0.3047), (0.0, 0.1539)).lineTo(0.0, 0.0).close()
solid2=wp_sketch2.add(loop4).extrude(0.4766)
solid=solid.cut(solid2)
";

    /// Reference program 5 of the dataset, compacted: one sketch, `both=True`, a `-0.0`.
    const REF_BOTH: &str = "\
wp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(-0.1797, 0.0, 0.0), cq.Vector(1.0, 0.0, -0.0), cq.Vector(0.0, -1.0, 0.0)))
loop0=wp_sketch0.moveTo(0.1816, 0.0).circle(0.1816)
solid0=wp_sketch0.add(loop0).extrude(-0.75, both=True)
solid=solid0
";

    /// Hand-made: one sketch of two circles, `both=True`.
    const CIRCLES: &str = "\
wp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))
loop0=wp_sketch0.moveTo(0.75, 0.0).circle(0.75)
loop1=wp_sketch0.moveTo(0.75, 0.0).circle(0.3711)
solid0=wp_sketch0.add(loop0).add(loop1).extrude(0.1172, both=True)
solid=solid0
";

    /// Hand-made: a union, an arc-only chain, small and negative numbers.
    const UNION: &str = "\
wp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))
loop0=wp_sketch0.moveTo(0.0, 0.0).lineTo(1.0, 0.0).lineTo(1.0, 1.0).close()
solid0=wp_sketch0.add(loop0).extrude(0.5)
solid=solid0
wp_sketch1 = cq.Workplane(cq.Plane(cq.Vector(0.001, -250.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))
loop1=wp_sketch1.moveTo(0.0, 0.0).threePointArc((1.0, 1.0), (2.0, 0.0)).close()
loop2=wp_sketch1.moveTo(-0.5, 0.25).circle(0.1)
solid1=wp_sketch1.add(loop1).add(loop2).extrude(-0.25, both=True)
solid=solid.union(solid1)
";

    const PROGRAMS: [&str; 4] = [REF_CUT, REF_BOTH, CIRCLES, UNION];

    fn rejects_at(program: &str) -> usize {
        match parses(program) {
            Ok(()) => panic!("accepted:\n{program}"),
            Err((at, _)) => at,
        }
    }

    /// Checks that `base` parses and that replacing `from` by `to` in it is rejected at the
    /// edit (not before it, and at most two bytes after it: a shared literal may run on).
    fn rejects_in(base: &str, from: &str, to: &str) -> usize {
        assert_eq!(parses(base), Ok(()));
        let start = base
            .find(from)
            .unwrap_or_else(|| panic!("{from:?} not in base"));
        let at = rejects_at(&base.replacen(from, to, 1));
        assert!(
            (start..=start + to.len() + 2).contains(&at),
            "{from:?} -> {to:?}: rejected at {at}, edit at {start}..{}",
            start + to.len()
        );
        at
    }

    /// `base` with `from` replaced by `to` (once, must occur).
    fn edit(base: &str, from: &str, to: &str) -> String {
        assert!(base.contains(from), "{from:?} not in base");
        base.replacen(from, to, 1)
    }

    #[test]
    fn program_table_labels_point_where_they_should() {
        assert!(matches!(PROG[START as usize], Item::Lit(b"wp_sketch")));
        assert!(matches!(PROG[WP_NAME as usize], Item::Name(Var::Sketch)));
        assert!(matches!(PROG[LOOP_NAME as usize], Item::Name(Var::Loop)));
        assert!(matches!(PROG[CIRCLE as usize], Item::Num));
        assert!(matches!(PROG[LINE as usize], Item::Num));
        assert!(matches!(PROG[ARC as usize], Item::Num));
        assert!(matches!(PROG[SEG_NEXT as usize], Item::Choice(_)));
        assert!(matches!(PROG[LOOP_END as usize], Item::Do(Act::LoopDone)));
        assert!(matches!(PROG[SOLID_NAME as usize], Item::Name(Var::Sketch)));
        assert!(matches!(PROG[ADDS as usize], Item::Choice(_)));
        assert!(matches!(PROG[ADD_NAME as usize], Item::Name(Var::Add)));
        assert!(matches!(PROG[EXTRUDE as usize], Item::Num));
        assert!(matches!(PROG[COMBINE as usize], Item::Choice(_)));
        assert!(matches!(
            PROG[COMBINE_NAME as usize],
            Item::Name(Var::Sketch)
        ));
        assert!(matches!(PROG[AFTER_COMBINE as usize], Item::Choice(_)));
        assert!(matches!(
            PROG[NEW_SKETCH as usize],
            Item::Do(Act::NewSketch)
        ));
        // No alternative of a choice is a prefix of another; a number is always followed by
        // a literal that cannot continue it.
        for (i, item) in PROG.iter().enumerate() {
            if let Item::Choice(alts) = item {
                for a in alts.iter() {
                    for b in alts.iter() {
                        assert!(std::ptr::eq(a, b) || !b.lit.starts_with(a.lit), "item {i}");
                    }
                }
            }
            if let Item::Num = item {
                let mut next = i + 1;
                while let Item::Do(_) | Item::Jump(_) = PROG[next] {
                    next = match PROG[next] {
                        Item::Jump(to) => to as usize,
                        _ => next + 1,
                    };
                }
                let first: Vec<u8> = match &PROG[next] {
                    Item::Lit(l) => vec![l[0]],
                    Item::Choice(alts) => alts.iter().map(|a| a.lit[0]).collect(),
                    other => panic!("item {i} followed by {other:?}"),
                };
                assert!(
                    first.iter().all(|b| !b"0123456789.eE+-".contains(b)),
                    "item {i}"
                );
            }
        }
    }

    #[test]
    fn programs_parse_and_accept_end() {
        for p in PROGRAMS {
            assert_eq!(parses(p), Ok(()), "{p}");
            let mut s = DialectState::start();
            assert!(s.feed(p.as_bytes()));
            assert!(s.accepts_end());
            assert!(!s.is_rejected());
        }
        let mut s = DialectState::start();
        assert!(s.feed(REF_CUT.as_bytes()));
        assert_eq!((s.sketches(), s.loops()), (3, 5));
    }

    #[test]
    fn only_complete_programs_accept_end() {
        for p in PROGRAMS {
            let mut s = DialectState::start();
            let mut ends = 0;
            for (i, &b) in p.as_bytes().iter().enumerate() {
                assert!(s.feed_byte(b));
                if s.accepts_end() {
                    ends += 1;
                    // Right after a combine line.
                    assert!(p[..=i].ends_with("solid0\n") || p[..=i].ends_with(")\n"));
                    assert!(p[..=i].rsplit('\n').nth(1).unwrap().starts_with("solid="));
                }
            }
            assert_eq!(ends, p.matches("solid=").count());
        }
        assert!(!DialectState::start().accepts_end());
    }

    #[test]
    fn byte_by_byte_and_random_chunks_agree() {
        let mut rng = seeded::Rng::new(0x9E37_79B9, 0);
        let mut cases: Vec<String> = PROGRAMS.iter().map(|p| p.to_string()).collect();
        cases.push(edit(CIRCLES, "loop1=", "loop2="));
        cases.push(edit(REF_CUT, ".close()\nloop1", ".close()\nloop1 "));
        for p in &cases {
            let bytes = p.as_bytes();
            let mut one = DialectState::start();
            let ok_one = bytes.iter().all(|&b| one.feed_byte(b));
            for _ in 0..50 {
                let mut s = DialectState::start();
                let mut ok = true;
                let mut i = 0;
                while i < bytes.len() {
                    let j = (i + 1 + rng.below(12)).min(bytes.len());
                    ok &= s.feed(&bytes[i..j]);
                    i = j;
                }
                assert_eq!(ok, ok_one);
                if ok {
                    assert_eq!(s, one);
                }
            }
        }
    }

    #[test]
    fn wrong_names_are_rejected() {
        let second = "wp_sketch1 = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nloop2=wp_sketch1.moveTo(0.5, 0.5).circle(0.1)\nsolid1=wp_sketch1.add(loop2).extrude(0.1)\nsolid=solid.union(solid1)\n";
        let two = format!("{CIRCLES}{second}");
        assert_eq!(parses(&two), Ok(()));
        // Wrong loop number.
        let at = rejects_in(CIRCLES, "loop1=", "loop2=");
        assert_eq!(&CIRCLES[at..at + 1], "1");
        rejects_in(CIRCLES, "loop1=", "loop10=");
        rejects_in(&two, "loop2=", "loop0=");
        // Wrong sketch number: in a loop line, in the solid line, in a new sketch.
        rejects_in(CIRCLES, "loop1=wp_sketch0", "loop1=wp_sketch1");
        rejects_in(CIRCLES, "solid0=wp_sketch0", "solid1=wp_sketch0");
        rejects_in(CIRCLES, "solid0=wp_sketch0", "solid0=wp_sketch1");
        rejects_in(&two, "wp_sketch1 = ", "wp_sketch2 = ");
        rejects_in(CIRCLES, "wp_sketch0 = ", "wp_sketch1 = ");
        // `.add` skipping a loop, repeating one, `.extrude` before all adds, an extra add.
        rejects_in(CIRCLES, ".add(loop0).add(loop1)", ".add(loop1)");
        rejects_in(CIRCLES, ".add(loop0).add(loop1)", ".add(loop0).add(loop0)");
        rejects_in(CIRCLES, ".add(loop0).add(loop1)", ".add(loop0)");
        let at = rejects_in(&two, ".add(loop2)", ".add(loop2).add(loop3)");
        // At the `a` of the extra `.add`, not later at `.extrude`.
        assert_eq!(at, two.find(".add(loop2)").unwrap() + ".add(loop2).".len());
        // Union in sketch 0, union with the wrong n, solid0 in a later sketch.
        rejects_in(CIRCLES, "solid=solid0", "solid=solid.union(solid1)");
        rejects_in(CIRCLES, "solid=solid0", "solid=solid.union(solid0)");
        rejects_in(&two, "union(solid1)", "union(solid2)");
        rejects_in(&two, "union(solid1)", "union(solid0)");
        rejects_in(&two, "solid=solid.union(solid1)", "solid=solid1");
        rejects_in(&two, "solid=solid.union(solid1)", "solid=solid0");
        rejects_in(
            &two,
            "solid=solid.union(solid1)",
            "solid=solid.union(solid0)",
        );
        // A loop number that is a prefix of the expected one is fine mid-name only.
        let mut s = DialectState::start();
        assert!(s.feed(REF_CUT.split("loop4").next().unwrap().as_bytes()));
        assert!(!s.clone().feed(b"loop40"));
        assert!(s.feed(b"loop4="));
    }

    #[test]
    fn multi_digit_names_follow_the_expected_number() {
        // Twelve loops in sketch 0: `loop1` is a prefix of `loop10`, `loop11`.
        let mut p = String::from("wp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n");
        for k in 0..12 {
            p.push_str(&format!(
                "loop{k}=wp_sketch0.moveTo(0.0, 0.0).circle(1.0)\n"
            ));
        }
        let adds: String = (0..12).map(|k| format!(".add(loop{k})")).collect();
        p.push_str(&format!(
            "solid0=wp_sketch0{adds}.extrude(1.0)\nsolid=solid0\n"
        ));
        assert_eq!(parses(&p), Ok(()));
        rejects_in(&p, "loop11=", "loop1=");
        rejects_in(&p, "loop1=", "loop11=");
        rejects_in(&p, ".add(loop10)", ".add(loop1)");
        rejects_in(&p, ".add(loop10)", ".add(loop100)");
    }

    #[test]
    fn foreign_text_is_rejected() {
        assert_eq!(rejects_at("import os\n"), 0);
        assert_eq!(rejects_at("__import__('os')"), 0);
        assert_eq!(rejects_at("import cadquery as cq\nwp_sketch0"), 0);
        assert_eq!(rejects_at("# comment\n"), 0);
        rejects_in(CIRCLES, "loop1=wp_sketch0", "loop1=__import__");
        rejects_in(CIRCLES, ".circle(0.75)", ".circle(__import__('os'))");
        // A space where none belongs, or missing where one does.
        rejects_in(CIRCLES, "loop1=", "loop1 =");
        rejects_in(CIRCLES, "(0.75, 0.0)", "(0.75,0.0)");
        rejects_in(CIRCLES, "(0.75, 0.0)", "( 0.75, 0.0)");
        rejects_in(CIRCLES, "wp_sketch0 = ", "wp_sketch0= ");
        rejects_in(
            CIRCLES,
            "extrude(0.1172, both=True)",
            "extrude(0.1172,both=True)",
        );
        rejects_in(CIRCLES, "solid=solid0\n", "solid=solid0 \n");
        // No blank lines, no missing newline.
        rejects_in(CIRCLES, "\nsolid=", "\n\nsolid=");
        assert!(parses(CIRCLES.trim_end()).is_err());
        // Unknown methods.
        rejects_in(CIRCLES, ".circle(0.75)", ".rect(0.75)");
        rejects_in(CIRCLES, ".extrude(", ".revolve(");
    }

    #[test]
    fn chains_must_close_properly() {
        let base = "wp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nloop0=wp_sketch0.moveTo(0.0, 0.0)CHAIN\nsolid0=wp_sketch0.add(loop0).extrude(1.0)\nsolid=solid0\n";
        let with = |chain: &str| base.replace("CHAIN", chain);
        assert!(parses(&with(".lineTo(1.0, 0.0).lineTo(0.0, 1.0).close()")).is_ok());
        assert!(parses(&with(".threePointArc((1.0, 1.0), (2.0, 0.0)).close()")).is_ok());
        assert!(parses(&with(
            ".lineTo(1.0, 0.0).threePointArc((1.0, 1.0), (2.0, 0.0)).close()"
        ))
        .is_ok());
        // A single lineTo may not close; no segment at all may not close; chains must close.
        let good = ".lineTo(1.0, 0.0).lineTo(0.0, 1.0).close()";
        let valid = with(good);
        for bad in [
            ".lineTo(1.0, 0.0).close()",
            ".close()",
            ".lineTo(1.0, 0.0).lineTo(0.0, 1.0)",
            ".circle(1.0).close()",
            ".lineTo(1.0, 0.0).circle(1.0)",
            ".threePointArc((1.0, 1.0)).close()",
            "",
        ] {
            rejects_in(&valid, good, bad);
        }
    }

    #[test]
    fn numbers_are_bounded() {
        let with = |n: &str| edit(CIRCLES, ".circle(0.3711)", &format!(".circle({n})"));
        for ok in [
            "0.0",
            "-0.75",
            "12.5",
            "0.04737",
            "0.001",
            "-0.0",
            "9999.5",
            "1.000000000",
            "0.000000001",
        ] {
            assert_eq!(parses(&with(ok)), Ok(()), "{ok}");
        }
        for bad in [
            "12345.0",
            "1.0000000000",
            "0.0000000001",
            "1e-3",
            "2.5E+10",
            "7",
            "-0",
            "01",
            "00.5",
            "-",
            "1.",
            ".5",
            "--1",
            "+1",
            "1.2.3",
            "0x10",
            "1_000",
            "nan",
            "1 ",
        ] {
            rejects_in(CIRCLES, ".circle(0.3711)", &format!(".circle({bad})"));
        }
    }

    #[test]
    fn a_complete_program_takes_only_the_next_sketch() {
        for tail in [
            "\n",
            " ",
            "solid=solid0\n",
            "wp_sketch0",
            "wp_sketch2",
            "wp_sketch",
            "import os\n",
            "loop2=",
            "x",
        ] {
            let p = format!("{CIRCLES}{tail}");
            let at = rejects_at(&p);
            assert!(at >= CIRCLES.len(), "{tail:?}");
        }
        let mut s = DialectState::start();
        assert!(s.feed(CIRCLES.as_bytes()));
        assert!(s.accepts_end());
        assert!(s.feed(b"wp_sketch1 = "));
        assert!(!s.accepts_end());
    }

    #[test]
    fn caps_on_sketches_and_loops_never_strand_the_decoder() {
        let sketch = |n: usize, k: usize| {
            format!("wp_sketch{n} = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nloop{k}=wp_sketch{n}.moveTo(0.0, 0.0).circle(1.0)\nsolid{n}=wp_sketch{n}.add(loop{k}).extrude(1.0)\nsolid={}\n",
                if n == 0 { "solid0".to_string() } else { format!("solid.union(solid{n})") })
        };
        let mut p = String::new();
        for n in 0..MAX_SKETCHES as usize {
            p.push_str(&sketch(n, n));
        }
        assert_eq!(parses(&p), Ok(()));
        let mut s = DialectState::start();
        assert!(s.feed(p.as_bytes()));
        assert!(s.accepts_end());
        assert!(!s.clone().feed(b"w"), "a 33rd sketch");
        assert!(s.expecting().contains("end"));

        // 1024 loops in one sketch, then only `solid` may follow.
        let mut s = DialectState::start();
        assert!(s.feed(b"wp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n"));
        for k in 0..MAX_LOOPS {
            assert!(s.feed(format!("loop{k}=wp_sketch0.moveTo(0.0, 0.0).circle(1.0)\n").as_bytes()));
        }
        assert!(!s.clone().feed(b"l"));
        let adds: String = (0..MAX_LOOPS).map(|k| format!(".add(loop{k})")).collect();
        assert!(s.feed(format!("solid0=wp_sketch0{adds}.extrude(1.0)\nsolid=solid0\n").as_bytes()));
        assert!(s.accepts_end());
        assert!(!s.clone().feed(b"w"), "no loop left for another sketch");
    }

    #[test]
    fn errors_say_where_and_what() {
        let (at, why) = parses(&edit(CIRCLES, "loop1=", "loop2=")).unwrap_err();
        assert_eq!(at, CIRCLES.find("loop1=").unwrap() + 4);
        assert!(why.contains("loop number 1"), "{why}");
        let (at, why) = parses("wp_sketch0 = cq.Workplane(").unwrap_err();
        assert_eq!(at, 26);
        assert!(why.starts_with("unexpected end"), "{why}");
        let (_, why) = parses(&edit(CIRCLES, "(0.75, 0.0)", "(0.75x 0.0)")).unwrap_err();
        assert!(why.contains("a number or \", \""), "{why}");
    }

    /// Brute-force mask: clone the state, feed the token, check.
    fn brute(tokens: &[Vec<u8>], end_id: u32, state: &DialectState) -> Vec<bool> {
        tokens
            .iter()
            .enumerate()
            .map(|(id, t)| {
                if id as u32 == end_id {
                    state.accepts_end()
                } else {
                    !t.is_empty() && state.clone().feed(t)
                }
            })
            .collect()
    }

    fn check_against_brute_force(tokens: Vec<Vec<u8>>, end_id: u32) {
        let mask = TokenMask::new(tokens.clone(), end_id);
        let mut allowed = vec![true; tokens.len() + 3];
        let mut any_allowed_somewhere = 0;
        for p in PROGRAMS {
            let mut s = DialectState::start();
            for &b in p.as_bytes().iter().chain(b"wp_sketch") {
                mask.allowed(&s, &mut allowed);
                let want = brute(&tokens, end_id, &s);
                assert_eq!(&allowed[..tokens.len()], &want[..], "state {s:?}");
                assert!(allowed[tokens.len()..].iter().all(|a| !a));
                any_allowed_somewhere += want.iter().filter(|a| **a).count();
                assert!(s.feed_byte(b));
            }
        }
        assert!(any_allowed_somewhere > 0);
    }

    #[test]
    fn mask_equals_brute_force_on_a_toy_vocabulary() {
        let toy = [
            "wp_sketch0",
            "wp_sketch1",
            "wp_sketch",
            " = cq",
            ".Workplane(",
            "cq.",
            "Plane",
            "Vector(",
            "loop",
            "0",
            "1",
            "2",
            "3",
            "4",
            "12",
            "=",
            "(",
            ")",
            ".",
            "\n",
            "",
            "<|endoftext|>",
            ", ",
            ",",
            " ",
            "1=wp",
            "0=wp",
            "=wp_sketch0",
            "solid",
            "solid=solid",
            "solid0\n",
            ".union(",
            ".cut(",
            ".add(loop",
            ".extrude(",
            ")\n",
            "\nloop",
            ".close()\n",
            ").close()\n",
            ".lineTo(",
            ".threePointArc((",
            "), (",
            "))",
            ".circle(",
            "-",
            "0.",
            "e-",
            "5",
            "75",
            ".75",
            "both=True",
            ", both=True)\n",
            "solid=solid0\nwp",
            "moveTo",
            ".moveTo(",
            "0.0, 0.0",
            "))\nloop0",
        ];
        let tokens: Vec<Vec<u8>> = toy.iter().map(|t| t.as_bytes().to_vec()).collect();
        let end_id = toy.iter().position(|t| *t == "<|endoftext|>").unwrap() as u32;
        check_against_brute_force(tokens, end_id);
    }

    #[test]
    fn mask_equals_brute_force_on_program_substrings() {
        // Every distinct substring of length 1..=5 of the programs: many prefixes shared.
        let mut tokens: Vec<Vec<u8>> = vec![b"".to_vec()];
        let mut seen = std::collections::HashSet::new();
        for p in PROGRAMS {
            let b = p.as_bytes();
            for len in 1..=5 {
                for w in b.windows(len) {
                    if seen.insert(w.to_vec()) {
                        tokens.push(w.to_vec());
                    }
                }
            }
        }
        tokens.push(b"<eos>".to_vec());
        let end_id = tokens.len() as u32 - 1;
        check_against_brute_force(tokens, end_id);
    }

    #[test]
    fn no_reachable_state_is_a_dead_end() {
        // Every state reachable byte by byte (counters kept small) has a next byte or may end.
        let mut seen = std::collections::HashSet::new();
        let mut todo = vec![DialectState::start()];
        seen.insert(DialectState::start());
        while let Some(s) = todo.pop() {
            let mut live = s.accepts_end();
            for b in 0..=255u8 {
                let mut next = s;
                if next.feed_byte(b) {
                    live = true;
                    assert!(next.add <= next.loops, "{next:?}");
                    if next.sketch <= 2 && next.loops <= 3 && seen.insert(next) {
                        todo.push(next);
                    }
                }
            }
            assert!(live, "dead end: {s:?}");
        }
        assert!(seen.len() > 1000, "{}", seen.len());
    }

    /// Random decoding under the mask: some token is always allowed, and what comes out parses.
    pub(super) fn random_programs(count: usize, seed: u64) -> Vec<String> {
        let mut tokens: Vec<Vec<u8>> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for p in PROGRAMS {
            for len in 1..=4 {
                for w in p.as_bytes().windows(len) {
                    if seen.insert(w.to_vec()) {
                        tokens.push(w.to_vec());
                    }
                }
            }
        }
        tokens.push(Vec::new());
        let end_id = tokens.len() as u32 - 1;
        let mask = TokenMask::new(tokens.clone(), end_id);
        let mut rng = seeded::Rng::from_state(seed);
        let mut allowed = vec![false; mask.len()];
        let mut out = Vec::new();
        while out.len() < count {
            let mut s = DialectState::start();
            let mut text = Vec::new();
            for step in 0.. {
                mask.allowed(&s, &mut allowed);
                let ids: Vec<usize> = (0..allowed.len()).filter(|&i| allowed[i]).collect();
                assert!(!ids.is_empty(), "stranded after {:?}", show(&text));
                if allowed[end_id as usize] && rng.below(3) == 0 {
                    break;
                }
                let id = ids[rng.below(ids.len())];
                if id == end_id as usize {
                    break;
                }
                assert!(mask.feed_token(&mut s, id as u32));
                text.extend_from_slice(&tokens[id]);
                if step > 20_000 {
                    break;
                }
            }
            if s.accepts_end() {
                let text = String::from_utf8(text).unwrap();
                assert_eq!(parses(&text), Ok(()));
                out.push(text);
            }
        }
        out
    }

    #[test]
    fn random_decoding_under_the_mask_never_strands_and_parses() {
        let programs = random_programs(20, 7);
        assert!(programs.iter().any(|p| p.contains("wp_sketch1")));
    }

    #[test]
    fn feed_token_follows_the_mask() {
        let tokens: Vec<Vec<u8>> = ["wp_sketch0", " = cq", "<eos>", "loop", "0", ""]
            .iter()
            .map(|t| t.as_bytes().to_vec())
            .collect();
        let mask = TokenMask::new(tokens, 2);
        assert_eq!(mask.len(), 6);
        let mut s = DialectState::start();
        assert!(!mask.feed_token(&mut s.clone(), 2));
        assert!(!mask.feed_token(&mut s.clone(), 5));
        assert!(!mask.feed_token(&mut s.clone(), 99));
        assert!(mask.feed_token(&mut s, 0));
        assert!(mask.feed_token(&mut s, 1));
        let mut short = [true; 2];
        mask.allowed(&DialectState::start(), &mut short);
        assert_eq!(short, [true, false]);
        let mut done = DialectState::start();
        assert!(done.feed(CIRCLES.as_bytes()));
        assert!(mask.feed_token(&mut done, 2));
    }

    #[test]
    fn mask_timing_on_a_random_vocabulary() {
        let alphabet: Vec<u8> = {
            let mut a: Vec<u8> = PROGRAMS.iter().flat_map(|p| p.bytes()).collect();
            a.sort_unstable();
            a.dedup();
            a
        };
        let mut rng = seeded::Rng::from_state(42);
        let mut tokens: Vec<Vec<u8>> = (0..4000)
            .map(|_| {
                let len = 1 + rng.below(8);
                (0..len)
                    .map(|_| alphabet[rng.below(alphabet.len())])
                    .collect()
            })
            .collect();
        tokens.push(Vec::new());
        let end_id = tokens.len() as u32 - 1;
        let mask = TokenMask::new(tokens, end_id);
        let mut allowed = vec![false; mask.len()];
        let mut states = Vec::new();
        let mut s = DialectState::start();
        for &b in REF_CUT.as_bytes() {
            states.push(s);
            assert!(s.feed_byte(b));
        }
        let t = Instant::now();
        let mut total = 0usize;
        for s in &states {
            mask.allowed(s, &mut allowed);
            total += allowed.iter().filter(|a| **a).count();
        }
        let per_call = t.elapsed() / states.len() as u32;
        println!(
            "TokenMask::allowed over {} tokens: {per_call:?} per call ({} states, {:.1} allowed on average)",
            mask.len(),
            states.len(),
            total as f64 / states.len() as f64
        );
        assert!(total > 0);
    }
}
