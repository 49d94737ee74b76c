fn main() -> std::process::ExitCode {
    tim_engine::cli::main()
}
