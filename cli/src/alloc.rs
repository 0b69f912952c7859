//! Allocator settings of the secure-inference commands (`simulate`, `party`, `bench secure`,
//! `bench net`; the others keep glibc's defaults). The secure protocols allocate and free
//! buffers of megabytes to hundreds of megabytes in every layer; glibc's defaults hand every
//! block above its mapping threshold back to the kernel when it is freed and serve each
//! thread from its own arena, so every layer ran on fresh pages (a page fault and a page clear
//! per 4 KiB: about a third of the CPU time of a ResNet-50 inference with every ReLU). Here
//! freed memory stays in one heap and is reused; the peak measured with it is lower, not
//! higher (docs/benchmarks.md).

/// Keeps freed memory in the process for reuse (glibc only; elsewhere nothing to do).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn keep_freed_memory() {
    // SAFETY: `mallopt` only sets allocator parameters; it is called in `main` right after
    // the arguments are parsed, before any other thread exists, with parameters and values
    // glibc documents.
    unsafe {
        // No block is served by its own mapping (each would be unmapped when freed) ...
        libc::mallopt(libc::M_MMAP_MAX, 0);
        // ... the heap's free top is handed back only above 1 GiB ...
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        // ... and all threads share one heap, so that a block one party's thread frees is
        // reused by the next layer whichever thread allocates it.
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Keeps freed memory in the process for reuse (glibc only; elsewhere nothing to do).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn keep_freed_memory() {}
