//! Command-line flags shared by the binaries under `src/bin`. Each flag has
//! an environment twin; the README's flag table lists them.

pub mod cli;
