//! The Dockerfile front half of `apex build`: everything that needs no VM.
//!
//! - [`dockerfile`]: parses a Dockerfile into stages and instructions, with
//!   Moby's semantics (parser directives, continuations, heredocs, JSON forms);
//! - [`words`]: the shell-style word expansion Docker applies to instruction
//!   arguments (`$VAR`, `${VAR:-default}`, quotes, escapes);
//! - [`ignore`]: `.dockerignore` patterns as `moby/patternmatcher` reads them;
//! - [`context`]: the build-context tar archive, as the docker CLI writes it;
//! - [`glob`]: Go's `path/filepath.Match`, used for `COPY` sources.
//!
//! The parser is hand-written rather than taken from crates.io: the Rust
//! Dockerfile parsers there (`dockerfile-parser` and its forks) are
//! unmaintained and support neither heredocs nor the `# escape=` directive, and
//! a build must accept exactly what `docker build` accepts. Values are kept raw
//! by the parser; the executor expands them with [`words`] against the build
//! environment of the moment, as BuildKit does.

pub mod context;
pub mod dockerfile;
pub mod glob;
pub mod ignore;
pub mod words;

pub use dockerfile::{parse, Dockerfile, Instruction, Kind, ParseError, Stage};
