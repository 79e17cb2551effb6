fn main() -> std::process::ExitCode {
    nerite::runtime::cli::main()
}
