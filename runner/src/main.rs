//! `runner`: the command-line front end; see `runner --help`.

use clap::error::ErrorKind;
use clap::Parser;

fn main() {
    // MPI (feature `mpi`) first; finalized when `started` drops.
    let started = runner::world::start();
    let args = runner::cli::joined_negative_numbers(std::env::args_os());
    let cli = match runner::cli::Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) => fail(&runner::cli::usage_error(&e.render().to_string()), started),
    };
    if let Err(e) = runner::cli::run(cli) {
        // A progress bar left on the terminal would garble the error line.
        runner::logger::finish_progress();
        fail(&e.to_string(), started);
    }
    // A signal caught after the work last looked (its result whole) still
    // ends the process as the signal would.
    started.finish();
    runner::interrupt::end_if_caught();
}

/// Prints the one `error: ...` line and exits with 1 (as the signal would
/// have, for a run a caught Ctrl-C stopped); in a run of several
/// processes, says which rank failed and ends them all (the others would
/// wait for it in the next collective forever).
fn fail(message: &str, started: runner::world::Started) -> ! {
    let world = runner::world::current();
    if world.size() > 1 {
        runner::world::print_error(&format!("rank {}: {message}", world.rank()));
        world.abort(1);
    }
    started.finish();
    runner::world::print_error(message);
    runner::interrupt::end_if_caught();
    std::process::exit(1);
}
