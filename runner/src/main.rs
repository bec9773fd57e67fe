//! `runner`: the command-line front end; see `runner --help`.

use clap::error::ErrorKind;
use clap::Parser;

fn main() {
    runner::memory::share_allocator_under_limit();
    // MPI (feature `mpi`) first; finalized when `started` drops.
    let started = runner::world::start();
    let args = runner::cli::joined_negative_numbers(std::env::args_os());
    let cli = match runner::cli::Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) => fail(
            &runner::cli::usage_error(&e.render().to_string()),
            false,
            started,
        ),
    };
    if let Err(e) = runner::cli::run(cli) {
        // A progress bar left on the terminal would garble the error line.
        runner::logger::finish_progress();
        fail(&e.to_string(), e.ends_every_rank(), started);
    }
    // A signal caught after the work last looked (its result whole) still
    // ends the process as the signal would.
    started.finish();
    runner::interrupt::end_if_caught();
}

/// Prints the one `error: ...` line and exits with 1 (as the signal would
/// have, for a run a caught Ctrl-C stopped); in a run of several
/// processes, says which rank failed and ends them all (the others would
/// wait for it in the next collective forever). An error every rank met
/// (`agreed`: a caught signal, a divergence) ends the ranks together,
/// each after the work they agreed to finish (a save), so rank 0 alone
/// says why and none is aborted.
fn fail(message: &str, agreed: bool, started: runner::world::Started) -> ! {
    let world = runner::world::current();
    if world.size() > 1 && !agreed {
        runner::world::print_error(&format!("rank {}: {message}", world.rank()));
        world.abort(1);
    }
    // Before MPI finalizes: a rank that ends first by its signal has
    // mpirun end the others.
    if world.rank() == 0 {
        runner::world::print_error(message);
    }
    started.finish();
    runner::interrupt::end_if_caught();
    std::process::exit(1);
}
