fn main() -> std::process::ExitCode {
    print!("{}", nerite::crdgen::crd_yaml().expect("crd"));
    std::process::ExitCode::SUCCESS
}
