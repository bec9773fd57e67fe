//! `runner`: the command-line front end; see `runner --help`.

use clap::error::ErrorKind;
use clap::Parser;

fn main() {
    let cli = match runner::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) => fail(&runner::cli::usage_error(&e.render().to_string())),
    };
    if let Err(e) = runner::cli::run(cli) {
        // A progress bar left on the terminal would garble the error line.
        runner::logger::finish_progress();
        fail(&e.to_string());
    }
}

/// Prints the one `error: ...` line and exits with 1.
fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}
