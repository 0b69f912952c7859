//! What the end-to-end tests share: running `knapsec` and checking how it ends (a one-line
//! `error: …` and status 1 on failure), input images as `.npy` files, the small secure model
//! the deployment tests serve, party processes with their logs, the check of a client's results
//! against `knapsec simulate`, polling with a deadline, and skipping (or, in CI, failing) the
//! system tests that need root and tools.

use knapsec_core::BlockSize;
use knapsec_core::graph::{ModelWeights, OutputKind, SecureModel};
use knapsec_core::graph_build::{ConvSpec, GraphBuilder, random_weights};
use serde_json::Value;
use std::ffi::OsStr;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Fractional bits of the secure models built here.
pub const FRAC: u32 = 12;

/// `knapsec ARGS`, blind to the caller's plugin path and log level, without colours.
pub fn knapsec<S: AsRef<OsStr>>(args: &[S]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_knapsec"));
    c.args(args)
        .env_remove("KNAPSEC_PLUGIN_PATH")
        .env_remove("KNAPSEC_LOG")
        .env("NO_COLOR", "1");
    c
}

/// `knapsec` logging at `info`: the deployment tests wait for and read its log lines.
pub fn knapsec_logged() -> Command {
    let mut c = knapsec::<&str>(&[]);
    c.env("KNAPSEC_LOG", "info");
    c
}

/// Runs `c`; its output, stdout and stderr. `knapsec` itself must not panic.
pub fn run(c: &mut Command) -> (Output, String, String) {
    let out = c.output().expect("knapsec runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !stderr.contains("panicked at"),
        "{c:?}: knapsec itself panicked: {stderr}"
    );
    (out, stdout, stderr)
}

/// Runs a command that must succeed; its stdout and stderr.
pub fn ok(c: &mut Command) -> (String, String) {
    let (out, stdout, stderr) = run(c);
    assert!(out.status.success(), "{c:?} failed: {stderr}");
    (stdout, stderr)
}

/// Runs a command that must succeed; its stdout.
pub fn run_ok(c: &mut Command) -> String {
    ok(c).0
}

/// Runs a command that must fail with status 1; its stderr.
pub fn fails(c: &mut Command) -> String {
    let (out, _, stderr) = run(c);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{c:?}: status {:?}, stderr {stderr}",
        out.status
    );
    stderr
}

/// Runs a command that must fail cleanly: status 1 and one line `error: …`, which it returns.
pub fn run_err(c: &mut Command) -> String {
    let stderr = fails(c);
    assert!(stderr.starts_with("error: "), "{c:?}: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "{c:?}: not one line: {stderr}"
    );
    stderr
}

pub fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

pub fn p(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// Prints on the test's real stderr (not captured by the harness).
pub fn say(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// A deterministic stream of small reals in [-1, 1).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
}

/// Writes a float32 C-order `.npy` file.
pub fn write_npy(path: &Path, shape: [u32; 3], data: &[f32]) {
    use npyz::WriterBuilder as _;
    let file = std::fs::File::create(path).unwrap();
    let mut w = npyz::WriteOptions::<f32>::new()
        .default_dtype()
        .shape(&shape.map(u64::from))
        .writer(std::io::BufWriter::new(file))
        .begin_nd()
        .unwrap();
    w.extend(data.iter().copied()).unwrap();
    w.finish().unwrap();
}

/// The values of a float32 `.npy` file.
pub fn read_npy(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    npyz::NpyFile::new(&bytes[..]).unwrap().into_vec().unwrap()
}

/// `n` images `img000.npy`, … of `shape` in `dir` (created), values uniform in ±`scale`.
pub fn write_images(dir: &Path, n: usize, shape: [u32; 3], rng: &mut Lcg, scale: f64) {
    std::fs::create_dir_all(dir).unwrap();
    let len: usize = shape.iter().map(|&d| d as usize).product();
    for i in 0..n {
        let x: Vec<f32> = (0..len).map(|_| (rng.next() * scale) as f32).collect();
        write_npy(&dir.join(format!("img{i:03}.npy")), shape, &x);
    }
}

/// Polls `ready` (every `every_ms`) until it holds; fails with `why()` after `secs` seconds.
/// `ready` may fail the test itself, e.g. when the process it waits on ended early.
#[cfg(feature = "torch")]
pub fn wait_until(
    secs: u64,
    every_ms: u64,
    mut ready: impl FnMut() -> bool,
    why: impl Fn() -> String,
) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < Duration::from_secs(secs), "{}", why());
        std::thread::sleep(Duration::from_millis(every_ms));
    }
}

/// Fails when `child` has exited: it was to run until something happened (`what`).
pub fn assert_running(child: &mut Child, what: &str) {
    if let Some(status) = child.try_wait().unwrap() {
        panic!("the process ended ({status}) before {what}");
    }
}

/// Kills `child` and reaps it.
pub fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The small network the deployment tests serve: conv 3×3 (`input` → `c`) → block ReLU (one
/// channel in three a ReLU, one a 2×2 patch, one identity) → conv 3×3 → ReLU → global average
/// pool → linear (→ 4), with random fixed-point weights from `seed`.
pub fn small_model(arch: &str, input: [u32; 3], c: u32, seed: u64) -> (SecureModel, ModelWeights) {
    let mut g = GraphBuilder::new(arch, FRAC, input);
    let mut conv = ConvSpec::square(c, 3, 1, 1);
    conv.bias = true;
    let x = g.conv("conv1", g.input(), conv, None).unwrap();
    let blocks = (0..c)
        .map(|k| match k % 3 {
            0 => BlockSize::RELU,
            1 => BlockSize::patch(2, 2).unwrap(),
            _ => BlockSize::Identity,
        })
        .collect();
    let x = g.block_relu("relu1", x, blocks).unwrap();
    let x = g.conv("conv2", x, conv, None).unwrap();
    let x = g
        .block_relu("relu2", x, vec![BlockSize::RELU; c as usize])
        .unwrap();
    let x = g.global_avg_pool("pool", x).unwrap();
    g.linear("fc", x, 4, true).unwrap();
    let (m, _) = g.finish(OutputKind::Classification).unwrap();
    let w = random_weights(&m, seed);
    w.check_against(&m).unwrap();
    (m, w)
}

/// A `deploy.ron`: the server and helper at `server` and `helper`, key files in the folder
/// `keys` (the client's public key and each role's private key), the model folder `model` run
/// by securenn with `options`, and the `timeouts` tuple.
pub fn deploy_ron(
    server: &str,
    helper: &str,
    keys: &str,
    model: &str,
    options: &str,
    timeouts: &str,
) -> String {
    format!(
        r#"(
    format: 1,
    client: (public_key: "{keys}/client.pub"),
    server: (address: "{server}", public_key: "keys/server.pub"),
    helper: (address: "{helper}", public_key: "keys/helper.pub"),
    private_key: "{keys}/{{role}}.key",
    model: "{model}",
    backend: "securenn",
    options: "{options}",
    timeouts: {timeouts},
)
"#
    )
}

/// `knapsec keys gen --role ROLE -o DIR` with `cmd` (a `knapsec` command, maybe on another
/// host).
pub fn keys_gen(mut cmd: Command, role: &str, dir: &Path) {
    ok(cmd.args(["keys", "gen", "--role", role, "-o"]).arg(dir));
}

/// The client's arguments for `inputs` and its results file `out`.
pub fn client_args(inputs: &Path, out: &Path) -> [String; 4] {
    [
        "--input".into(),
        p(inputs).into(),
        "-o".into(),
        p(out).into(),
    ]
}

/// A party process (`knapsec party`) with its stderr in a log file; killed on drop.
pub struct Party {
    pub child: Child,
    pub log: PathBuf,
}

impl Party {
    /// `CMD party --role ROLE --config CONFIG EXTRA`, stderr to `log`.
    pub fn spawn(
        mut cmd: Command,
        role: &str,
        config: impl AsRef<OsStr>,
        extra: &[impl AsRef<OsStr>],
        log: PathBuf,
    ) -> Party {
        let child = cmd
            .args(["party", "--role", role, "--config"])
            .arg(config)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Party { child, log }
    }

    /// Waits at most `secs`; `None` on timeout (the process still runs).
    pub fn wait(&mut self, secs: f64) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs_f64(secs) {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Waits at most `secs` for the party to exit; fails when it does not.
    pub fn exits(&mut self, secs: f64, who: &str) -> ExitStatus {
        self.wait(secs)
            .unwrap_or_else(|| panic!("the {who} hangs:\n{}", self.log()))
    }

    /// Waits at most `secs` for the party to exit successfully.
    pub fn succeeds(&mut self, secs: f64, who: &str) {
        let st = self.exits(secs, who);
        assert!(st.success(), "the {who} failed ({st}):\n{}", self.log());
    }

    pub fn kill(&mut self) {
        kill(&mut self.child);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `error:` line of the log.
    pub fn error_line(&self) -> String {
        let log = self.log();
        log.lines()
            .rfind(|l| l.starts_with("error:"))
            .unwrap_or_else(|| panic!("no error line in {}:\n{log}", self.log.display()))
            .to_string()
    }

    /// Waits (at most `secs`) until the log contains `text`; fails when the party stops first.
    pub fn wait_for_log(&mut self, text: &str, secs: u64) {
        let start = Instant::now();
        while !self.log().contains(text) {
            assert_running(
                &mut self.child,
                &format!("'{text}' in {}", self.log.display()),
            );
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "no '{text}' after {secs} s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Party {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits (at most 60 s) for the client to finish its session successfully; on failure shows
/// its log and those of `others`.
pub fn expect_success(client: &mut Party, others: &[&Party]) {
    let status = client.exits(60.0, "client");
    if !status.success() {
        let logs: String = others
            .iter()
            .map(|p| format!("\n{}:\n{}", p.log.display(), p.log()))
            .collect();
        panic!("the client failed:\n{}{logs}", client.log());
    }
}

/// The logits of a result (`{"output": {"Logits": [...]}}`).
pub fn logits(v: &Value) -> Vec<f64> {
    v["output"]["Logits"]
        .as_array()
        .unwrap_or_else(|| panic!("no logits in {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

pub fn argmax(v: &[f64]) -> usize {
    (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap()
}

/// The rows of a client's results file, after checking the model hash and their number.
pub fn result_rows(results: &Path, model_hash: &str, n: usize) -> Vec<Value> {
    let report = json(&std::fs::read_to_string(results).unwrap());
    assert_eq!(report["model_hash"], model_hash);
    let rows = report["results"].as_array().unwrap().clone();
    assert_eq!(rows.len(), n);
    rows
}

/// Checks that `got` (a deployed inference of `input`) equals `knapsec simulate` of the model in
/// `model` (three parties in one process) up to the last bits of the fixed point: each party's
/// local truncation is off by one unit with a probability that depends on the (fresh) random
/// shares. Returns the simulated logits.
pub fn check_against_simulate(model: &Path, input: &Path, got: &[f64]) -> Vec<f64> {
    let stdout = run_ok(
        knapsec(&["simulate", "--json", "--model"])
            .arg(model)
            .arg("--input")
            .arg(input),
    );
    let want = logits(&json(&stdout));
    assert_eq!(got.len(), want.len());
    let ulp = 1.0 / (1u64 << FRAC) as f64;
    let diff = got
        .iter()
        .zip(&want)
        .map(|(g, s)| (g - s).abs())
        .fold(0.0, f64::max);
    eprintln!(
        "largest difference deployed vs simulated: {diff} ({} ulp)",
        diff / ulp
    );
    assert!(
        diff <= 4.0 * ulp,
        "{}: deployed {got:?} vs simulated {want:?}",
        input.display()
    );
    want
}

/// Whether `program` is on the PATH.
pub fn found(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `true` when system test `test` can run: `why_not` is `None`. Otherwise it says why the test
/// skips, or fails when the environment requires the system tests
/// (`KNAPSEC_REQUIRE_SYSTEM_TESTS=1`, as in CI).
pub fn system_test_runs(test: &str, why_not: Option<String>) -> bool {
    let Some(why) = why_not else {
        return true;
    };
    if std::env::var_os("KNAPSEC_REQUIRE_SYSTEM_TESTS").is_some_and(|v| v == "1") {
        panic!("KNAPSEC_REQUIRE_SYSTEM_TESTS=1 but {test} cannot run: {why}");
    }
    say(&format!("SKIPPED {test}: {why}"));
    false
}

/// `knapsec distortion` arguments of a small `resnet18-cifar` (base width 4, 16×16 greyscale
/// inputs, 5 classes, one worker so that values are bitwise reproducible), then `extra`.
#[cfg(feature = "torch")]
pub fn small_distortion(extra: &[&str]) -> Vec<String> {
    [
        "--arch",
        "resnet18-cifar",
        "--input-size",
        "16",
        "16",
        "--input-channels",
        "1",
        "--classes",
        "5",
        "--base-width",
        "4",
        "--workers",
        "1",
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect()
}

/// Checks that two distortion tables are equal bit for bit.
#[cfg(feature = "torch")]
pub fn assert_tables_bitwise_equal(a: &Path, b: &Path) {
    use knapsec_core::distortion::DistortionTable;
    let (x, y) = (
        DistortionTable::load(a).unwrap(),
        DistortionTable::load(b).unwrap(),
    );
    assert_eq!(x.arch, y.arch);
    assert_eq!(x.provenance, y.provenance);
    assert!(x.layers.keys().eq(y.layers.keys()));
    for ((name, p), q) in x.layers.iter().zip(y.layers.values()) {
        assert_eq!(p.candidates, q.candidates, "{name}");
        assert_eq!(p.values.len(), q.values.len(), "{name}");
        for (i, (u, v)) in p.values.iter().zip(&q.values).enumerate() {
            assert!(
                u.to_bits() == v.to_bits(),
                "{name} cell {i}: {} has {u}, {} has {v}",
                a.display(),
                b.display()
            );
        }
    }
}
