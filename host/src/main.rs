fn main() -> std::process::ExitCode {
    registry_token::cli::main()
}
