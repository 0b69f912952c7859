//! Options every command shares ([`GlobalArgs`]: verbosity, plugin sets) and the
//! [`Context`] a command runs in (the registry of its plugin set, stdout, progress bars).

use anyhow::Context as _;
use clap::Args;
use knapsec_builtin::PluginSet;
use knapsec_core::Registry;
use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The environment variable naming plugin folders (separated like `PATH`); every shared
/// library in them is loaded.
pub const PLUGIN_PATH_ENV: &str = "KNAPSEC_PLUGIN_PATH";

/// Options accepted by every command.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// More log output (-v: debug, -vv: trace). `KNAPSEC_LOG` (tracing filter syntax)
    /// overrides it.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors on stderr; no progress bars.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Load the plugins of this shared library (repeatable).
    #[arg(long = "plugin", value_name = "PATH", global = true)]
    pub plugins: Vec<PathBuf>,
    /// Read a plugin-set file (RON): libraries to load, built-ins to keep or leave out.
    #[arg(long = "plugins", value_name = "FILE", global = true)]
    pub plugin_set: Option<PathBuf>,
    /// Ignore the KNAPSEC_PLUGIN_PATH folders.
    #[arg(long, global = true)]
    pub no_plugin_path: bool,
}

/// What a command runs with.
pub struct Context {
    pub global: GlobalArgs,
    registry: OnceLock<Registry>,
}

impl Context {
    pub fn new(global: GlobalArgs) -> Self {
        Context {
            global,
            registry: OnceLock::new(),
        }
    }

    /// The plugin set of this run: the `--plugins` file, then the `KNAPSEC_PLUGIN_PATH`
    /// folders, then each `--plugin`.
    pub fn plugin_set(&self) -> anyhow::Result<PluginSet> {
        let mut set = match &self.global.plugin_set {
            Some(file) => PluginSet::from_file(file)?,
            None => PluginSet::default(),
        };
        if !self.global.no_plugin_path
            && let Some(dirs) = std::env::var_os(PLUGIN_PATH_ENV)
        {
            set.dirs
                .extend(std::env::split_paths(&dirs).filter(|p| !p.as_os_str().is_empty()));
        }
        set.load.extend(self.global.plugins.iter().cloned());
        Ok(set)
    }

    /// A registry of only the plugins this run names explicitly (the `--plugins` file and
    /// each `--plugin`), ignoring the `KNAPSEC_PLUGIN_PATH` folders; for `knapsec party`,
    /// whose process holds weights or keys.
    pub fn explicit_registry(&self) -> anyhow::Result<Registry> {
        let mut set = match &self.global.plugin_set {
            Some(file) => PluginSet::from_file(file)?,
            None => PluginSet::default(),
        };
        set.load.extend(self.global.plugins.iter().cloned());
        tracing::debug!(?set, "building the plugin registry (explicit plugins only)");
        knapsec_builtin::registry_with(&set).context("cannot set up the plugins")
    }

    /// The registry of this run's plugin set, built on first use.
    pub fn registry(&self) -> anyhow::Result<&Registry> {
        if let Some(r) = self.registry.get() {
            return Ok(r);
        }
        let set = self.plugin_set()?;
        tracing::debug!(?set, "building the plugin registry");
        let registry = knapsec_builtin::registry_with(&set).context("cannot set up the plugins")?;
        Ok(self.registry.get_or_init(|| registry))
    }

    /// Standard output, locked and buffered; flush before returning.
    pub fn stdout(&self) -> std::io::BufWriter<std::io::StdoutLock<'static>> {
        std::io::BufWriter::new(std::io::stdout().lock())
    }

    /// Prints `value` as pretty JSON on stdout.
    pub fn print_json<T: serde::Serialize>(&self, value: &T) -> anyhow::Result<()> {
        let mut out = self.stdout();
        serde_json::to_writer_pretty(&mut out, value)?;
        writeln!(out)?;
        out.flush()?;
        Ok(())
    }
}
