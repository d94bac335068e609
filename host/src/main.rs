/// jemalloc instead of the system allocator. With glibc's, the two workers, the ledger's writer
/// and the log line's allocations queued on a handful of arena locks: a reused token's answer took
/// 35–47 µs of CPU, 29–32 µs with jemalloc, and the peak memory under a cold load stays under the
/// 64 MiB of the target with the settings in .cargo/config.toml (docs/BENCHMARKS.md). At run time
/// `_RJEM_MALLOC_CONF` overrides them.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    registry_token::cli::main()
}
