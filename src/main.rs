/// jemalloc instead of glibc's malloc: in the chat benchmark at saturation, glibc's allocator
/// (with its chunk consolidation) took about a quarter of the server's CPU (benches/README.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    tim_tools::cli::main()
}
