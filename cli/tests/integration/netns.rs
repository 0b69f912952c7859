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

use crate::support::{
    Lcg, Party, argmax, check_against_simulate, client_args, deploy_ron, expect_success, found,
    is_root, keys_gen, logits, result_rows, say, small_model, system_test_runs, write_images,
};
use knapsec_core::graph::SecureModel;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// `timeouts.recv_s` of the deployments here.
const RECV_S: u64 = 5;
const HOSTS: [(&str, &str); 4] = [
    ("client", "10.0.0.1"),
    ("server", "10.0.0.2"),
    ("helper", "10.0.0.3"),
    ("stranger", "10.0.0.4"),
];

/// Whether network namespaces can be used here (see [`system_test_runs`]).
fn can_run(test: &str) -> bool {
    let why = if !is_root() {
        Some("needs root (it creates network namespaces)".to_string())
    } else if !found("ip") {
        Some("`ip` not found (apt-get install iproute2; .ci/run does)".to_string())
    } else {
        None
    };
    system_test_runs(test, why)
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

/// The deployment on the four hosts: one folder per host, set up as docs/deployment.md says.
struct Site {
    lan: Lan,
    dir: tempfile::TempDir,
    model: SecureModel,
    /// Holds the other tests back while this one runs.
    _one: std::sync::MutexGuard<'static, ()>,
    test: &'static str,
    t0: Instant,
}

impl Site {
    /// The site of system test `test`; `None` (skipped) where namespaces cannot be used.
    fn new(test: &'static str) -> Option<Site> {
        if !can_run(test) {
            return None;
        }
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let t0 = Instant::now();
        let lan = Lan::new();
        let dir = tempfile::tempdir().unwrap();
        // 1. Keys: each host makes its own pair; the stranger makes a client key of its own.
        for (host, _) in HOSTS {
            let role = if host == "stranger" { "client" } else { host };
            let mut cmd = lan.knapsec_on(host);
            cmd.current_dir(dir.path());
            keys_gen(cmd, role, &dir.path().join(host).join("keys"));
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
        let (model, weights) = small_model("netns-test", [3, 12, 12], 8, 7);
        for (host, _) in HOSTS {
            let m = dir.path().join(host).join("model");
            model.save(&m).unwrap();
            if host == "server" {
                weights.save(&m).unwrap();
            }
        }
        // 3. One deploy.ron, the same on every host.
        let text = deploy_ron(
            "10.0.0.2:7101",
            "10.0.0.3:7102",
            "keys",
            "model",
            "()",
            &format!("(connect_s: 10, handshake_s: 5, recv_s: {RECV_S}, linger_s: 1)"),
        );
        for (host, _) in HOSTS {
            std::fs::write(dir.path().join(host).join("deploy.ron"), &text).unwrap();
        }
        Some(Site {
            lan,
            dir,
            model,
            _one,
            test,
            t0,
        })
    }

    fn host(&self, host: &str) -> PathBuf {
        self.dir.path().join(host)
    }

    /// `knapsec party --role ROLE --config deploy.ron EXTRA` on `host`, from its folder.
    fn party(
        &self,
        host: &str,
        role: &str,
        extra: &[impl AsRef<std::ffi::OsStr>],
        log: &str,
    ) -> Party {
        let mut cmd = self.lan.knapsec_on(host);
        cmd.current_dir(self.host(host));
        let log = self.dir.path().join(format!("log-{log}.txt"));
        Party::spawn(cmd, role, "deploy.ron", extra, log)
    }

    /// `n` input images in the client's `images-TAG/`.
    fn inputs(&self, n: usize, tag: &str) -> PathBuf {
        let dir = self.host("client").join(format!("images-{tag}"));
        let seed = tag.bytes().fold(17u64, |a, b| a * 31 + b as u64);
        write_images(&dir, n, self.model.input_shape(), &mut Lcg(seed), 1.0);
        dir
    }

    /// Checks the client's results file against `knapsec simulate` of each input.
    fn check_results(&self, results: &Path, n: usize) {
        for r in result_rows(results, &self.model.public_hash(), n) {
            let input = self.host("client").join(r["input"].as_str().unwrap());
            let want =
                check_against_simulate(&self.host("server").join("model"), &input, &logits(&r));
            assert_eq!(r["label"].as_u64().unwrap() as usize, argmax(&want));
        }
    }

    /// Starts the server and the helper, each with `flags`.
    fn serve(&self, flags: &[&str]) -> (Party, Party) {
        (
            self.party("server", "server", flags, "server"),
            self.party("helper", "helper", flags, "helper"),
        )
    }

    /// Starts one client session over `inputs`; returns it and its results file.
    fn client(&self, inputs: &Path, out: &str, log: &str) -> (Party, PathBuf) {
        let results = self.host("client").join(out);
        let p = self.party("client", "client", &client_args(inputs, &results), log);
        (p, results)
    }

    /// The test passed: says how long it took.
    fn done(self) {
        say(&format!(
            "{}: {:.1} s (namespaces included)",
            self.test,
            self.t0.elapsed().as_secs_f64()
        ));
    }
}

#[test]
fn three_hosts_give_the_results_of_simulate() {
    let Some(site) = Site::new("three_hosts_give_the_results_of_simulate") else {
        return;
    };
    let (mut server, mut helper) = site.serve(&["--sessions", "1"]);
    let inputs = site.inputs(4, "a");
    let (mut client, results) = site.client(&inputs, "results.json", "client");
    expect_success(&mut client, &[&server, &helper]);
    site.check_results(&results, 4);
    server.succeeds(20.0, "server");
    helper.succeeds(20.0, "helper");
    // The parties listened on their own hosts' addresses.
    assert!(server.log().contains("10.0.0.2:7101"), "{}", server.log());
    assert!(helper.log().contains("10.0.0.3:7102"), "{}", helper.log());
    site.done();
}

#[test]
fn the_servers_link_cut_mid_session_stops_client_and_helper() {
    let Some(site) = Site::new("the_servers_link_cut_mid_session_stops_client_and_helper") else {
        return;
    };
    // `--exit-on-error`: the helper stops with the session's error instead of serving the next
    // one, so that its exit shows what it concluded.
    let (_server, mut helper) = site.serve(&["--sessions", "1", "--exit-on-error"]);
    let long = site.inputs(300, "long");
    let (mut client, results) = site.client(&long, "results.json", "client");
    helper.wait_for_log("index=1", 60);
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
    for (who, party) in [("client", &mut client), ("helper", &mut helper)] {
        let status = party
            .wait((limit - cut.elapsed().as_secs_f64()).max(0.0))
            .unwrap_or_else(|| {
                panic!(
                    "the {who} still runs {limit} s after the cut:\n{}",
                    party.log()
                )
            });
        assert!(!status.success());
    }
    say(&format!(
        "{}: client and helper stopped {:.1} s after the cut (recv_s = {RECV_S})",
        site.test,
        cut.elapsed().as_secs_f64()
    ));
    for (who, party) in [("client", &client), ("helper", &helper)] {
        let line = party.error_line();
        assert!(
            line.contains("server") && line.contains("layer"),
            "the {who}'s error names neither the server nor the layer: {line}"
        );
    }
    assert!(!results.exists(), "the client wrote a results file");
    site.done();
}

#[test]
fn a_helper_killed_and_restarted_serves_the_next_session() {
    let Some(site) = Site::new("a_helper_killed_and_restarted_serves_the_next_session") else {
        return;
    };
    let mut server = site.party("server", "server", &["--keep-going"], "server");
    let mut helper = site.party("helper", "helper", &[] as &[&str], "helper-1");
    let long = site.inputs(300, "long");
    let (mut client, results) = site.client(&long, "results-1.json", "client-1");
    helper.wait_for_log("index=1", 60);
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
    helper.succeeds(20.0, "helper");
    server.kill();
    site.done();
}

#[test]
fn a_fourth_host_with_the_wrong_key_cannot_take_part() {
    let Some(site) = Site::new("a_fourth_host_with_the_wrong_key_cannot_take_part") else {
        return;
    };
    let (mut server, mut helper) = site.serve(&["--sessions", "1"]);
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
    server.succeeds(20.0, "server");
    helper.succeeds(20.0, "helper");
    let log = server.log();
    assert!(
        log.contains("refused a connection") && log.contains("10.0.0.4"),
        "{log}"
    );
    site.done();
}
