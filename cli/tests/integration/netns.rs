//! The three parties on three hosts with their own addresses (issue 19): each "host" is a Linux
//! network namespace with one veth link to a bridge (in a fourth, switch namespace), so the
//! parties talk over a real L2 network: client 10.0.0.1, server 10.0.0.2, helper 10.0.0.3
//! (and a stranger at 10.0.0.4). Each host has its own folder and runs the deployment exactly
//! as `docs/deployment.md` says: `knapsec keys gen` on its host, the public keys copied to the
//! others, one `deploy.ron`, the model (weights on the server only), `knapsec party`.
//!
//! Checked: results equal `knapsec simulate` for several inputs; the server's link cut
//! mid-session stops client and helper within `recv_s` + 2 s with an error naming the server and
//! the layer, and no results file; the helper killed mid-session and restarted, the next session
//! succeeds; a fourth host with the wrong key cannot take part.
//!
//! Needs root and iproute2 (`ip netns`); elsewhere each test says why it skips, or fails when
//! `KNAPSEC_REQUIRE_SYSTEM_TESTS=1` (as in CI). Namespace names carry the test process's id and
//! are removed on drop (also when a test fails); leftovers of killed test runs are removed by
//! the next run.

use knapsec_core::BlockSize;
use knapsec_core::graph::{ModelWeights, OutputKind, SecureModel};
use knapsec_core::graph_build::{ConvSpec, GraphBuilder, random_weights};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const FRAC: u32 = 12;
/// `timeouts.recv_s` of the deployments here.
const RECV_S: u64 = 5;
const HOSTS: [(&str, &str); 4] = [
    ("client", "10.0.0.1"),
    ("server", "10.0.0.2"),
    ("helper", "10.0.0.3"),
    ("stranger", "10.0.0.4"),
];

fn knapsec() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_knapsec"));
    c.env_remove("KNAPSEC_PLUGIN_PATH")
        .env("KNAPSEC_LOG", "info")
        .env("NO_COLOR", "1");
    c
}

/// Prints on the test's real stderr (not captured by the harness).
fn say(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// `Some(reason)` when network namespaces cannot be used here; panics instead when the
/// environment requires the system tests.
fn cannot_run(test: &str) -> Option<String> {
    let why = if !Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
    {
        Some("needs root (it creates network namespaces)".to_string())
    } else if !Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        Some("`ip` not found (apt-get install iproute2; .ci/run does)".to_string())
    } else {
        None
    };
    if let Some(why) = &why {
        if std::env::var_os("KNAPSEC_REQUIRE_SYSTEM_TESTS").is_some_and(|v| v == "1") {
            panic!("KNAPSEC_REQUIRE_SYSTEM_TESTS=1 but {test} cannot run: {why}");
        }
        say(&format!("SKIPPED {test}: {why}"));
    }
    why
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

static LANS: AtomicUsize = AtomicUsize::new(0);

/// One test at a time: each runs three parties that keep the cores busy, and the link-cut test
/// checks a deadline that parties starved by another test's session could miss.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
const PREFIX: &str = "knapsec-t";

/// Removes the namespaces of test processes that no longer exist.
fn remove_leftovers() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if !pid.is_empty() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Four hosts on one bridge: a namespace per host, a switch namespace holding the bridge.
/// Dropping it deletes every namespace (and with them the links and the bridge).
struct Lan {
    prefix: String,
    namespaces: Vec<String>,
}

impl Lan {
    fn new() -> Lan {
        remove_leftovers();
        let prefix = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            LANS.fetch_add(1, Ordering::Relaxed)
        );
        let mut lan = Lan {
            prefix,
            namespaces: Vec::new(),
        };
        let sw = lan.add_ns("switch");
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        for (host, addr) in HOSTS {
            let ns = lan.add_ns(host);
            // The host's eth0 and its port on the switch, created in place.
            ip(&[
                "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", host, "netns",
                &sw,
            ]);
            ip(&["-n", &sw, "link", "set", host, "master", "br0", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        lan
    }

    fn add_ns(&mut self, name: &str) -> String {
        let ns = format!("{}-{name}", self.prefix);
        ip(&["netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        ns
    }

    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    /// `knapsec ARGS` run on `host`.
    fn knapsec_on(&self, host: &str) -> Command {
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            &self.ns(host),
            env!("CARGO_BIN_EXE_knapsec"),
        ])
        .env_remove("KNAPSEC_PLUGIN_PATH")
        .env("KNAPSEC_LOG", "info")
        .env("NO_COLOR", "1");
        c
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A party process, killed on drop.
struct Party {
    child: Child,
    log: PathBuf,
}

impl Party {
    /// Waits at most `secs`; `None` on timeout.
    fn wait(&mut self, secs: f64) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs_f64(secs) {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `error:` line of the log.
    fn error_line(&self) -> String {
        let log = self.log();
        log.lines()
            .rfind(|l| l.starts_with("error:"))
            .unwrap_or_else(|| panic!("no error line in {}:\n{log}", self.log.display()))
            .to_string()
    }
}

impl Drop for Party {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The small model: conv 3×3 → block ReLU (mixed patches) → conv 3×3 → ReLU → global average
/// pool → linear, random fixed-point weights.
fn model() -> (SecureModel, ModelWeights) {
    let c = 8u32;
    let mut g = GraphBuilder::new("netns-test", FRAC, [3, 12, 12]);
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
    let w = random_weights(&m, 7);
    (m, w)
}

/// Writes a float32 C-order .npy file.
fn write_npy(path: &Path, shape: [u32; 3], data: &[f32]) {
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}, {}), }}",
        shape[0], shape[1], shape[2]
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

/// The deployment on the four hosts: one folder per host, set up as docs/deployment.md says.
struct Site {
    lan: Lan,
    dir: tempfile::TempDir,
    model: SecureModel,
}

const DEPLOY_RON: &str = r#"(
    format: 1,
    client: (public_key: "keys/client.pub"),
    server: (address: "10.0.0.2:7101", public_key: "keys/server.pub"),
    helper: (address: "10.0.0.3:7102", public_key: "keys/helper.pub"),
    private_key: "keys/{role}.key",
    model: "model",
    backend: "securenn",
    timeouts: (connect_s: 10, handshake_s: 5, recv_s: RECV, linger_s: 1),
)
"#;

impl Site {
    fn new() -> Site {
        let lan = Lan::new();
        let dir = tempfile::tempdir().unwrap();
        // 1. Keys: each host makes its own pair; the stranger makes a client key of its own.
        for (host, _) in HOSTS {
            let role = if host == "stranger" { "client" } else { host };
            let out = lan
                .knapsec_on(host)
                .current_dir(dir.path())
                .args(["keys", "gen", "--role", role, "-o"])
                .arg(dir.path().join(host).join("keys"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // ... and the three public keys are copied to every host (the stranger only gets the
        // server's and the helper's, which are public).
        for (host, _) in HOSTS {
            for role in ["client", "server", "helper"] {
                if host == role || (host == "stranger" && role == "client") {
                    continue;
                }
                std::fs::copy(
                    dir.path().join(role).join(format!("keys/{role}.pub")),
                    dir.path().join(host).join(format!("keys/{role}.pub")),
                )
                .unwrap();
            }
        }
        // 2. The model: client, helper (and stranger) get model.ron, the server the weights too.
        let (model, weights) = model();
        for (host, _) in HOSTS {
            let m = dir.path().join(host).join("model");
            model.save(&m).unwrap();
            if host == "server" {
                weights.save(&m).unwrap();
            }
        }
        // 3. One deploy.ron, the same on every host.
        let text = DEPLOY_RON.replace("RECV", &RECV_S.to_string());
        for (host, _) in HOSTS {
            std::fs::write(dir.path().join(host).join("deploy.ron"), &text).unwrap();
        }
        Site { lan, dir, model }
    }

    fn host(&self, host: &str) -> PathBuf {
        self.dir.path().join(host)
    }

    /// `knapsec party --role ROLE --config deploy.ron EXTRA` on `host`, from its folder.
    fn party(&self, host: &str, role: &str, extra: &[&str], log: &str) -> Party {
        let log = self.dir.path().join(format!("log-{log}.txt"));
        let child = self
            .lan
            .knapsec_on(host)
            .current_dir(self.host(host))
            .args(["party", "--role", role, "--config", "deploy.ron"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Party { child, log }
    }

    /// `n` input images in the client's `images-TAG/`.
    fn inputs(&self, n: usize, tag: &str) -> PathBuf {
        let dir = self.host("client").join(format!("images-{tag}"));
        std::fs::create_dir_all(&dir).unwrap();
        let shape = self.model.input_shape();
        let len: usize = shape.iter().map(|&d| d as usize).product();
        let mut s = tag.bytes().fold(17u64, |a, b| a * 31 + b as u64);
        for i in 0..n {
            let x: Vec<f32> = (0..len)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
                })
                .collect();
            write_npy(&dir.join(format!("img{i:03}.npy")), shape, &x);
        }
        dir
    }

    /// Checks the client's results file against `knapsec simulate` of each input.
    fn check_results(&self, results: &Path, n: usize) {
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(results).unwrap()).unwrap();
        assert_eq!(report["model_hash"], self.model.public_hash());
        let rows = report["results"].as_array().unwrap();
        assert_eq!(rows.len(), n);
        let logits = |v: &serde_json::Value| -> Vec<f64> {
            v["output"]["Logits"]
                .as_array()
                .unwrap_or_else(|| panic!("no logits in {v}"))
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        };
        let ulp = 1.0 / (1u64 << FRAC) as f64;
        for r in rows {
            let input = self.host("client").join(r["input"].as_str().unwrap());
            let got = logits(r);
            let sim: Output = knapsec()
                .args(["simulate", "--json", "--model"])
                .arg(self.host("server").join("model"))
                .arg("--input")
                .arg(&input)
                .output()
                .unwrap();
            assert!(
                sim.status.success(),
                "{}",
                String::from_utf8_lossy(&sim.stderr)
            );
            let sim: serde_json::Value = serde_json::from_slice(&sim.stdout).unwrap();
            let want = logits(&sim);
            assert_eq!(got.len(), want.len());
            // Equal up to the last bits of the fixed point: each party's local truncation is off
            // by one unit with a probability that depends on the (fresh) random shares.
            let diff = got
                .iter()
                .zip(&want)
                .map(|(g, s)| (g - s).abs())
                .fold(0.0, f64::max);
            assert!(
                diff <= 4.0 * ulp,
                "{}: deployed {got:?} vs simulated {want:?}",
                input.display()
            );
            let label = (0..want.len())
                .max_by(|&a, &b| want[a].total_cmp(&want[b]))
                .unwrap();
            assert_eq!(r["label"].as_u64().unwrap() as usize, label);
        }
    }

    /// Runs one client session over `inputs` to completion; returns its results file.
    fn client(&self, inputs: &Path, out: &str, log: &str) -> (Party, PathBuf) {
        let results = self.host("client").join(out);
        let p = self.party(
            "client",
            "client",
            &[
                "--input",
                inputs.to_str().unwrap(),
                "-o",
                results.to_str().unwrap(),
            ],
            log,
        );
        (p, results)
    }
}

/// Waits until `party`'s log contains `text`.
fn wait_for_log(party: &mut Party, text: &str, secs: u64) {
    let start = Instant::now();
    while !party.log().contains(text) {
        assert!(
            party.child.try_wait().unwrap().is_none(),
            "the party stopped before '{text}':\n{}",
            party.log()
        );
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "no '{text}' after {secs} s:\n{}",
            party.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (at most 60 s) for the client to finish its session successfully; on failure shows
/// its log and those of `others`.
fn expect_success(client: &mut Party, others: &[&Party]) {
    let status = client.wait(60.0).expect("the client finishes");
    if !status.success() {
        let logs: String = others
            .iter()
            .map(|p| format!("\n{}:\n{}", p.log.display(), p.log()))
            .collect();
        panic!("the client failed:\n{}{logs}", client.log());
    }
}

fn done(test: &str, t0: Instant) {
    say(&format!(
        "{test}: {:.1} s (namespaces included)",
        t0.elapsed().as_secs_f64()
    ));
}

#[test]
fn three_hosts_give_the_results_of_simulate() {
    const T: &str = "three_hosts_give_the_results_of_simulate";
    if cannot_run(T).is_some() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    let site = Site::new();
    let mut server = site.party("server", "server", &["--sessions", "1"], "server");
    let mut helper = site.party("helper", "helper", &["--sessions", "1"], "helper");
    let inputs = site.inputs(4, "a");
    let (mut client, results) = site.client(&inputs, "results.json", "client");
    expect_success(&mut client, &[&server, &helper]);
    site.check_results(&results, 4);
    assert!(server.wait(20.0).expect("the server exits").success());
    assert!(helper.wait(20.0).expect("the helper exits").success());
    // The parties listened on their own hosts' addresses.
    assert!(server.log().contains("10.0.0.2:7101"), "{}", server.log());
    assert!(helper.log().contains("10.0.0.3:7102"), "{}", helper.log());
    done(T, t0);
}

#[test]
fn the_servers_link_cut_mid_session_stops_client_and_helper() {
    const T: &str = "the_servers_link_cut_mid_session_stops_client_and_helper";
    if cannot_run(T).is_some() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    let site = Site::new();
    // `--exit-on-error`: the helper stops with the session's error instead of serving the next
    // one, so that its exit shows what it concluded.
    let flags = ["--sessions", "1", "--exit-on-error"];
    let _server = site.party("server", "server", &flags, "server");
    let mut helper = site.party("helper", "helper", &flags, "helper");
    let long = site.inputs(300, "long");
    let (mut client, results) = site.client(&long, "results.json", "client");
    wait_for_log(&mut helper, "index=1", 60);
    // Pull the server's cable: its port on the switch goes down, its connections go silent.
    let cut = Instant::now();
    ip(&[
        "-n",
        &site.lan.ns("switch"),
        "link",
        "set",
        "server",
        "down",
    ]);
    let limit = RECV_S as f64 + 2.0;
    let client_status = client.wait(limit).unwrap_or_else(|| {
        panic!(
            "the client still runs {limit} s after the cut:\n{}",
            client.log()
        )
    });
    let helper_status = helper
        .wait((limit - cut.elapsed().as_secs_f64()).max(0.0))
        .unwrap_or_else(|| {
            panic!(
                "the helper still runs {limit} s after the cut:\n{}",
                helper.log()
            )
        });
    say(&format!(
        "{T}: client and helper stopped {:.1} s after the cut (recv_s = {RECV_S})",
        cut.elapsed().as_secs_f64()
    ));
    assert!(!client_status.success());
    assert!(!helper_status.success());
    for (who, party) in [("client", &client), ("helper", &helper)] {
        let line = party.error_line();
        assert!(
            line.contains("server") && line.contains("layer"),
            "the {who}'s error names neither the server nor the layer: {line}"
        );
    }
    assert!(!results.exists(), "the client wrote a results file");
    done(T, t0);
}

#[test]
fn a_helper_killed_and_restarted_serves_the_next_session() {
    const T: &str = "a_helper_killed_and_restarted_serves_the_next_session";
    if cannot_run(T).is_some() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    let site = Site::new();
    let mut server = site.party("server", "server", &["--keep-going"], "server");
    let mut helper = site.party("helper", "helper", &[], "helper-1");
    let long = site.inputs(300, "long");
    let (mut client, results) = site.client(&long, "results-1.json", "client-1");
    wait_for_log(&mut helper, "index=1", 60);
    helper.kill();
    let status = client.wait(RECV_S as f64 + 5.0).expect("the client stops");
    assert!(!status.success());
    let line = client.error_line();
    assert!(line.contains("helper"), "{line}");
    assert!(!results.exists());
    // The server survives the failed session (--keep-going); a new helper process on the
    // same host takes the next session.
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server stopped:\n{}",
        server.log()
    );
    let mut helper = site.party("helper", "helper", &["--sessions", "1"], "helper-2");
    let inputs = site.inputs(3, "b");
    let (mut client, results) = site.client(&inputs, "results-2.json", "client-2");
    expect_success(&mut client, &[&server, &helper]);
    site.check_results(&results, 3);
    assert!(helper.wait(20.0).expect("the helper exits").success());
    server.kill();
    done(T, t0);
}

#[test]
fn a_fourth_host_with_the_wrong_key_cannot_take_part() {
    const T: &str = "a_fourth_host_with_the_wrong_key_cannot_take_part";
    if cannot_run(T).is_some() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    let site = Site::new();
    let mut server = site.party("server", "server", &["--sessions", "1"], "server");
    let mut helper = site.party("helper", "helper", &["--sessions", "1"], "helper");
    let inputs = site.inputs(1, "s");
    // The stranger (10.0.0.4) plays the client with its own key, which nobody knows.
    std::fs::create_dir_all(site.host("stranger").join("images")).unwrap();
    std::fs::copy(
        inputs.join("img000.npy"),
        site.host("stranger").join("images/img000.npy"),
    )
    .unwrap();
    let mut stranger = site.party(
        "stranger",
        "client",
        &["--input", "images", "-o", "results.json"],
        "stranger",
    );
    let status = stranger.wait(30.0).expect("the stranger stops");
    assert!(!status.success());
    let line = stranger.error_line();
    assert!(
        line.contains("refused the connection") && line.contains("authentication failed"),
        "{line}"
    );
    assert!(!site.host("stranger").join("results.json").exists());
    // The server refused it, saying from where, and keeps serving: the real client succeeds.
    let (mut client, results) = site.client(&inputs, "results.json", "client");
    expect_success(&mut client, &[&server]);
    site.check_results(&results, 1);
    assert!(server.wait(20.0).expect("the server exits").success());
    assert!(helper.wait(20.0).expect("the helper exits").success());
    let log = server.log();
    assert!(
        log.contains("refused a connection") && log.contains("10.0.0.4"),
        "{log}"
    );
    done(T, t0);
}
