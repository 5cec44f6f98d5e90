use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keep freed memory mapped and committed: training frees and reallocates the same large tensor
/// buffers every step, and returning them to the OS costs more than the step's arithmetic.
#[allow(unsafe_code)] // two allocator settings through mimalloc's C API
fn tune_allocator() {
    // Indices of `mi_option_e` in mimalloc v3's mimalloc.h.
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: plain option setters of the allocator, called before any thread is started.
    unsafe {
        libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 1);
        libmimalloc_sys::mi_option_set(PURGE_DELAY, -1);
    }
}

/// candle's element-wise worker spins 25 000 times before parking after each op. When the cores
/// are shared (rayon's matmul and FFT threads, or other processes) the spinning starves the
/// threads doing work: a DiffuSSM step under load took 1.8× longer. A short spin keeps the
/// latency benefit on idle machines. A value set by the user wins.
fn tune_threads() {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // First thing in main, before any other thread exists.
        ssmlab::runs::os::set_env_at_startup(&[("CANDLE_BARRIER_POOL_SPIN_LIMIT", "200")]);
    }
}

fn main() -> ExitCode {
    tune_threads();
    tune_allocator();
    ssmlab::engine::cpu::prof::init_from_env();
    match ssmlab::cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Messages quote paths, names and fields from disk: the one sanitiser, and a write
            // that fails (stderr gone with the SSH session) is not a second error.
            use std::io::Write;
            let msg = format!("{e:#}");
            let _ = writeln!(
                std::io::stderr().lock(),
                "ssmlab: {}",
                ssmlab::text::sanitize_lines(&msg)
            );
            ExitCode::FAILURE
        }
    }
}
