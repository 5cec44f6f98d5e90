use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keep freed memory mapped and committed: training frees and reallocates the same large tensor
/// buffers every step, and returning them to the OS costs more than the step's arithmetic.
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

fn main() -> ExitCode {
    tune_allocator();
    match ssmlab::cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ssmlab: {e:#}");
            ExitCode::FAILURE
        }
    }
}
