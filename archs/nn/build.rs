//! Embeds libtorch's library folder as an rpath so that tests and binaries of this crate run
//! without `LD_LIBRARY_PATH` (toolchain notes: torch-sys exports it as `DEP_TCH_LIBTORCH_LIB`).
fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
}
