//! `runner` with no command: the first impression (see `crate::demo`).

use log::info;

use super::options::BackendChoice;
use crate::demo;
use crate::error::Error;
use crate::logger;
use crate::train::train;

pub fn run() -> Result<(), Error> {
    logger::init(false);
    info!("No command given: training the demo model on the embedded corpus of two-digit sums (see `runner --help`).");
    let (mut model, _) = train(&demo::recipe(), BackendChoice::Auto.kernels()?)?;
    demo::sample_check(&mut model)?;
    demo::held_out_check(&mut model)
}
