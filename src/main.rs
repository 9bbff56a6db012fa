//! The `berth` binary: parses the command line and turns the outcome into an exit code. Called as
//! `kamal-proxy` (a symlink or the proxy image's entrypoint), it is kamal-proxy's command line instead.

fn main() -> std::process::ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let called_as = args.first().map(std::path::Path::new).and_then(|p| p.file_name()).and_then(|n| n.to_str());
    if called_as == Some("kamal-proxy") {
        return berth::proxy::cli::main(args);
    }
    berth::cli::main()
}
