//! The binary's edge: parse arguments, run, print the error chain once, and
//! turn the result into an exit code.

fn main() -> std::process::ExitCode {
    // The confined extraction worker the service spawns per layer.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "__apply-layer")
    {
        return tarpool::worker::main();
    }
    match tarpool::cli::main() {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            tarpool::logging::fatal(&format!("{e:#}"));
            std::process::ExitCode::from(2)
        }
    }
}
