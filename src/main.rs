use std::process::ExitCode;

fn main() -> ExitCode {
    oneroster_sync::cli::main()
}
