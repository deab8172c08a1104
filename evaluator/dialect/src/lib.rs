//! The GenCAD CadQuery dialect as a typed program (docs/gencad.md, "The dialect"): parse a
//! program into planes, loops of lines / three-point arcs / circles, extrudes and union / cut
//! steps; print it back byte for byte as the dataset writes it (Python float repr); and reach
//! its numbers as typed parameters.
//!
//! One crate owns the dialect so that the corpus writer, the generator's views of code, the
//! statistics and the native renderer read programs the same way.

pub mod ast;
pub mod parse;
pub mod pyfloat;

pub use ast::{Extrude, Loop, Op, Plane, Program, Role, Seg, Sketch, VecRole};
pub use parse::{parse, ParseError};
