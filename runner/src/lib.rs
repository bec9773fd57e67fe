//! `runner`: trains and runs a GPT-2-style model on the CPU with the
//! `kernels` crate. The binary (`main.rs`) parses the command line
//! (`cli`) and runs one of `commands`; the work lives in this library:
//!
//! - `model`: the GPT-2 model (shapes, tensors, layers, the block, passes)
//! - `train`: the training loop and AdamW; `eval`: loss on a text;
//!   `generate`: sampling with the KV cache; `bench`: speed
//! - `data`: text, shards and the embedded corpus, the byte and GPT-2
//!   tokenizers, `prepare`, training windows; `demo`: the default job's
//!   recipe and checks
//! - `checkpoint`: the Hugging Face layout, atomic saves, run state
//! - `metrics`, `logger`, `plot`: what a run reports; `outputs`: checks
//!   the files it writes them to
//! - `world`: the processes of a data-parallel run (MPI behind a feature)
//! - `threads`, `rng`, `error`, `interrupt` (Ctrl-C as a request to
//!   stop): plumbing

pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod commands;
pub mod data;
pub mod demo;
pub mod error;
pub mod eval;
pub mod generate;
pub mod interrupt;
pub mod logger;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod outputs;
pub mod plot;
pub mod rng;
pub mod threads;
pub mod train;
pub mod world;
