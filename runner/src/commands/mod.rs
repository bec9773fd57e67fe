//! One module per command, each with its arguments and a `run(args)`; the
//! work itself lives in the library (`train`, `eval`, `generate`,
//! `bench`); `options` holds what several share. A command never imports
//! another command.

pub mod bench;
pub mod demo;
pub mod eval;
pub mod generate;
pub mod options;
pub mod prepare;
pub mod train;
