//! The binary's edge: parse arguments, run, print the error chain once, and
//! turn the result into an exit code.

fn main() -> std::process::ExitCode {
    match tarpool::cli::main() {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("tarpool: error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
