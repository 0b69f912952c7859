//! Fixture helpers: builds the plugin libraries the tests load, with the same cargo and the
//! same target folder as the running test, and finds the committed fixture files.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The plugin libraries built for the tests.
#[derive(Clone, Debug)]
pub struct PluginLibraries {
    /// `plugins/example`: `example-ratio-greedy` and `example-tinynet`.
    pub example: PathBuf,
    /// `tests/fixtures/plugins/faulty`: `faulty-panics`, `faulty-garbage`, `faulty-overspends`.
    pub faulty: PathBuf,
    /// `tests/fixtures/plugins/future-abi`: announces ABI version 99.
    pub future_abi: PathBuf,
}

const PACKAGES: [(&str, &str); 3] = [
    ("knapsec-example-plugin", "knapsec_example_plugin"),
    (
        "knapsec-fixture-faulty-plugin",
        "knapsec_fixture_faulty_plugin",
    ),
    (
        "knapsec-fixture-future-abi-plugin",
        "knapsec_fixture_future_abi_plugin",
    ),
];

/// The workspace root (the folder above this package).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A committed fixture file, by path relative to `tests/fixtures`.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

/// The target folder and profile folder of the running test executable
/// (`<target>/<profile>/deps/<test>`), unless `CARGO_TARGET_DIR` says otherwise.
fn target_and_profile() -> Result<(PathBuf, String), String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot locate the test executable: {e}"))?;
    let profile_dir = exe
        .ancestors()
        .nth(2)
        .ok_or("unexpected test executable location")?;
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_string();
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => PathBuf::from(t),
        None => profile_dir
            .parent()
            .ok_or("unexpected test executable location")?
            .to_path_buf(),
    };
    Ok((target, profile))
}

fn build() -> Result<PluginLibraries, String> {
    let (target, profile) = target_and_profile()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--quiet")
        .arg("--target-dir")
        .arg(&target);
    cmd.arg("--manifest-path")
        .arg(workspace_root().join("Cargo.toml"));
    if profile == "release" {
        cmd.arg("--release");
    }
    for (package, _) in PACKAGES {
        cmd.arg("-p").arg(package);
    }
    let out_dir = target.join(if profile == "release" {
        "release"
    } else {
        "debug"
    });
    let output = cmd.output().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "building the plugin fixtures failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let path = |lib: &str| {
        let p = out_dir.join(format!(
            "{}{lib}{}",
            std::env::consts::DLL_PREFIX,
            std::env::consts::DLL_SUFFIX
        ));
        if p.is_file() {
            Ok(p)
        } else {
            Err(format!("cargo built no {}", p.display()))
        }
    };
    Ok(PluginLibraries {
        example: path(PACKAGES[0].1)?,
        faulty: path(PACKAGES[1].1)?,
        future_abi: path(PACKAGES[2].1)?,
    })
}

/// Builds the plugin libraries once per test process (`cargo build -p …` into the running
/// test's own target folder) and returns their paths. Panics with cargo's output if the
/// build fails: a test cannot go on without them.
pub fn plugin_libraries() -> &'static PluginLibraries {
    static LIBS: OnceLock<Result<PluginLibraries, String>> = OnceLock::new();
    match LIBS.get_or_init(build) {
        Ok(libs) => libs,
        Err(e) => panic!("{e}"),
    }
}
