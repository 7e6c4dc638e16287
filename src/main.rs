//! `socketman`: parse the command line, run, exit with the code of SPEC §1.
#![forbid(unsafe_code)]

fn main() {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    std::process::exit(socketman::cli::main_with_args(&args));
}
