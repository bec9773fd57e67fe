//! `runner`: trains and runs a GPT-2-style model on the CPU with the
//! `kernels` crate. The binary (`main.rs`) is a thin CLI over this library.

pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod corpus;
pub mod data;
pub mod error;
pub mod eval;
pub mod generate;
pub mod logger;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod plot;
pub mod rng;
pub mod threads;
pub mod train;
