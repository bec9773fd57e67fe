//! `runner`: the command-line front end; see `runner --help`.

use clap::Parser;

fn main() {
    let cli = runner::cli::Cli::parse();
    if let Err(e) = runner::cli::run(cli) {
        // A progress bar left on the terminal would garble the error line.
        runner::logger::finish_progress();
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
