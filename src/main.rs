fn main() -> std::process::ExitCode {
    nerite::cli::main()
}
