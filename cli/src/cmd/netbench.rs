//! `knapsec bench net`: time per image of a three-host deployment (three `knapsec party`
//! processes, authenticated TCP) of any registered architecture with any private backend at a
//! DReLU budget, at several one-way network delays, and the protocol's number of sequential
//! rounds (issue 7).
//!
//! Two modes (`--mode`, default `auto`):
//! * `namespaces` (needs root and iproute2; `auto` picks it when it can): each party runs in
//!   its own Linux network namespace with its own address (client 10.0.0.1, server 10.0.0.2,
//!   helper 10.0.0.3) on a bridge, as in the three-host tests (issue 19); the parties talk
//!   over veth links and the bridge, not loopback.
//! * `loopback`: the three processes share the host's loopback.
//!
//! The delay is emulated by [`knapsec_net::delay::DelayRelay`]s in front of the server and
//! the helper (every connection, both directions, gets the delay): the kernel of the machine
//! this was written on has no `sch_netem`, so `tc netem` cannot be used. In namespace mode each
//! relay is a process in its party's namespace (`--relay`, hidden), listening on the party's
//! address and forwarding to the party. At 0 ms there are no relays. The goal of issue 7 is
//! `time(20 ms) ≤ rounds × 40 ms + 1.2 × time(0 ms)`; the report says whether it is met.

use crate::context::Context;
use anyhow::{Context as _, bail};
use knapsec_core::Role;
use knapsec_net::delay::DelayRelay;
use knapsec_net::keys::KeyPair;
use serde::Serialize;
use std::io::BufRead as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Arguments of `knapsec bench net`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    graph: crate::args::SecureBenchArgs,
    /// One-way delays to measure, in milliseconds; 0 is direct loopback.
    #[arg(long, value_delimiter = ',', default_value = "0,1,20")]
    delays_ms: Vec<u64>,
    /// Images per session (default: three inferences' worth, `3 × --batch`); the first
    /// inference also carries the once-per-session setup and is reported apart.
    #[arg(long)]
    images: Option<u64>,
    /// Images per inference (`knapsec party --batch`): every round carries all of them; a
    /// multiple of it is sent in each session, at least two inferences' worth.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    batch: u32,
    /// Seed of the random spec, weights and inputs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the parties run: `namespaces` (one network namespace and address per party, on a
    /// bridge; needs root and iproute2), `loopback`, or `auto` (namespaces when possible).
    #[arg(long, default_value = "auto", value_parser = ["auto", "namespaces", "loopback"])]
    mode: String,
    /// Accepted for symmetry with the other benches: the output is always JSON.
    #[arg(long)]
    json: bool,
    /// Internal (namespace mode): run one delay relay `LISTEN,TARGET,MS` until stdin closes.
    #[arg(long, hide = true, value_name = "LISTEN,TARGET,MS")]
    relay: Option<String>,
}

#[derive(Serialize)]
struct Run {
    one_way_delay_ms: u64,
    /// Seconds of an inference divided by its images, mean over the inferences after the
    /// first.
    seconds_per_image: f64,
    /// The same of the first inference (which carries the once-per-session setup).
    first_image_seconds: f64,
    /// The same of every inference, in order.
    per_image_seconds: Vec<f64>,
    /// Bytes the client sent per image (the last inference's, divided by its images).
    client_bytes_per_image: u64,
    /// Times the client waited for a peer before sending, per inference (the last one; a
    /// batch's images share them).
    client_flights_per_image: u64,
}

#[derive(Serialize)]
struct Report {
    bench: &'static str,
    backend: String,
    /// The backend's canonical options.
    options: String,
    arch: String,
    budget: f64,
    drelus: u64,
    images: u64,
    /// Images per inference.
    batch: u32,
    /// Sequential message rounds of one inference (offline + online, causal depth measured
    /// with all parties in one process; the once-per-session setup not included).
    rounds: u64,
    /// Sequential message rounds of the online phase alone.
    rounds_online: u64,
    setup_rounds: u64,
    /// `namespaces` or `loopback`: where the parties ran.
    mode: &'static str,
    emulation: &'static str,
    runs: Vec<Run>,
    /// `rounds × 40 ms + 1.2 × time(0 ms)`, and whether `time(20 ms)` stays below it.
    goal_bound_seconds: Option<f64>,
    goal_met: Option<bool>,
    cores: usize,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn write_npy(path: &Path, shape: [u32; 3], data: &[f32]) -> anyhow::Result<()> {
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
    data.iter()
        .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// The three hosts of namespace mode: one network namespace per party with its own address,
/// joined by a bridge in a fourth (switch) namespace. Dropping it deletes the namespaces, and
/// with them the links and the bridge.
struct Lan {
    prefix: String,
    namespaces: Vec<String>,
}

/// Namespace names of this bench start with this, then the process id.
const NS_PREFIX: &str = "knapsec-bench";
/// The parties' addresses in namespace mode.
const NS_HOSTS: [(Role, &str); 3] = [
    (Role::Client, "10.0.0.1"),
    (Role::Server, "10.0.0.2"),
    (Role::Helper, "10.0.0.3"),
];

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Lan {
    fn new() -> anyhow::Result<Lan> {
        Self::remove_leftovers();
        let mut lan = Lan {
            prefix: format!("{NS_PREFIX}{}", std::process::id()),
            namespaces: Vec::new(),
        };
        let sw = lan.add("switch")?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for (role, addr) in NS_HOSTS {
            let host = role.to_string();
            let ns = lan.add(&host)?;
            ip(&[
                "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &host,
                "netns", &sw,
            ])?;
            ip(&["-n", &sw, "link", "set", &host, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(lan)
    }

    fn add(&mut self, name: &str) -> anyhow::Result<String> {
        let ns = format!("{}-{name}", self.prefix);
        ip(&["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        Ok(ns)
    }

    fn ns(&self, role: Role) -> String {
        format!("{}-{role}", self.prefix)
    }

    /// Namespaces of earlier runs of this bench whose process is gone (killed mid-run).
    fn remove_leftovers() {
        let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
            return;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            let Some(rest) = name.strip_prefix(NS_PREFIX) else {
                continue;
            };
            let pid = rest.split('-').next().unwrap_or("");
            if !pid.is_empty() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A child process killed (and reaped) on drop, so that no party or relay outlives a failed
/// session.
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// `exe ARGS`, inside `ns` when given.
fn command_in(ns: Option<&str>, exe: &Path) -> Command {
    match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(exe);
            c
        }
        None => Command::new(exe),
    }
}

/// Starts a relay process in `ns` (`--relay`); returns it once it listens.
fn start_relay(exe: &Path, ns: &str, listen: &str, target: &str, ms: u64) -> anyhow::Result<Kid> {
    let mut kid = Kid(command_in(Some(ns), exe)
        .args(["-q", "bench", "net", "--relay"])
        .arg(format!("{listen},{target},{ms}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start a delay relay")?);
    let mut line = String::new();
    let stdout = kid.0.stdout.take().context("relay stdout")?;
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    if !line.starts_with("listening") {
        bail!("the delay relay {listen} -> {target} in {ns} did not start");
    }
    Ok(kid)
}

/// `--relay LISTEN,TARGET,MS`: one relay until stdin closes (the bench holds the other end).
fn run_relay(spec: &str) -> anyhow::Result<()> {
    let parts: Vec<&str> = spec.split(',').collect();
    let [listen, target, ms] = parts[..] else {
        bail!("--relay takes LISTEN,TARGET,MS, not {spec:?}");
    };
    let target: std::net::SocketAddr = target
        .parse()
        .with_context(|| format!("--relay: bad target address {target:?}"))?;
    let ms: u64 = ms
        .parse()
        .with_context(|| format!("--relay: bad delay {ms:?}"))?;
    let relay = DelayRelay::start(listen, target, Duration::from_millis(ms))?;
    println!("listening on {}", relay.addr());
    use std::io::Write as _;
    std::io::stdout().flush()?;
    let mut sink = Vec::new();
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    drop(relay);
    Ok(())
}

/// One session over `images` at `delay`: three child processes, in their namespaces when
/// `lan` is given (relays as processes there), else on loopback (relays in this process).
#[allow(clippy::too_many_arguments)]
fn run_session(
    dir: &Path,
    inputs: &Path,
    backend: &str,
    options: &str,
    images: u64,
    batch: u32,
    delay_ms: u64,
    lan: Option<&Lan>,
) -> anyhow::Result<Run> {
    let exe = std::env::current_exe()?;
    let delay = Duration::from_millis(delay_ms);
    let mut relays = Vec::new();
    let mut relay_kids = Vec::new();
    let (server, helper) = match lan {
        Some(lan) => {
            let (s, h) = (NS_HOSTS[1].1, NS_HOSTS[2].1);
            let (sl, hl) = (format!("{s}:7101"), format!("{h}:7102"));
            if delay_ms == 0 {
                ((sl.clone(), sl), (hl.clone(), hl))
            } else {
                let (sa, ha) = (format!("{s}:7201"), format!("{h}:7202"));
                relay_kids.push(start_relay(
                    &exe,
                    &lan.ns(Role::Server),
                    &sa,
                    &sl,
                    delay_ms,
                )?);
                relay_kids.push(start_relay(
                    &exe,
                    &lan.ns(Role::Helper),
                    &ha,
                    &hl,
                    delay_ms,
                )?);
                ((sa, sl), (ha, hl))
            }
        }
        None => {
            let (sp, hp) = (free_port()?, free_port()?);
            let (sl, hl) = (format!("127.0.0.1:{sp}"), format!("127.0.0.1:{hp}"));
            if delay_ms == 0 {
                ((sl.clone(), sl), (hl.clone(), hl))
            } else {
                let rs = DelayRelay::start("127.0.0.1:0", ([127, 0, 0, 1], sp).into(), delay)?;
                let rh = DelayRelay::start("127.0.0.1:0", ([127, 0, 0, 1], hp).into(), delay)?;
                let (a, b) = (rs.addr().to_string(), rh.addr().to_string());
                relays.push(rs);
                relays.push(rh);
                ((a, sl), (b, hl))
            }
        }
    };
    let ((server_addr, server_listen), (helper_addr, helper_listen)) = (server, helper);
    let cfg = dir.join(format!("deploy-{delay_ms}ms.ron"));
    std::fs::write(
        &cfg,
        format!(
            r#"(
    format: 1,
    client: (public_key: "keys/client.pub"),
    server: (address: "{server_addr}", listen: "{server_listen}", public_key: "keys/server.pub"),
    helper: (address: "{helper_addr}", listen: "{helper_listen}", public_key: "keys/helper.pub"),
    private_key: "keys/{{role}}.key",
    model: "model",
    backend: "{backend}",
    options: {options:?},
    timeouts: (connect_s: 30, handshake_s: 30, recv_s: 600, linger_s: 5),
    max_batch: {batch},
)"#
        ),
    )?;
    let spawn = |role: Role, extra: &[&str]| -> anyhow::Result<Kid> {
        let ns = lan.map(|l| l.ns(role));
        Ok(Kid(command_in(ns.as_deref(), &exe)
            .args(["-q", "party", "--role", &role.to_string(), "--config"])
            .arg(&cfg)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start the {role}"))?))
    };
    let mut server = spawn(Role::Server, &["--sessions", "1"])?;
    let mut helper = spawn(Role::Helper, &["--sessions", "1"])?;
    let out = dir.join(format!("result-{delay_ms}ms.json"));
    let mut client = spawn(
        Role::Client,
        &[
            "--input",
            &inputs.display().to_string(),
            "-o",
            &out.display().to_string(),
            "--batch",
            &batch.to_string(),
        ],
    )?;
    let client = client.0.wait()?;
    // After a failed client, the server and helper stop within their timeouts; never wait
    // for them forever.
    let finish = |kid: &mut Kid| -> anyhow::Result<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = kid.0.try_wait()? {
                return Ok(s);
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = kid.0.kill();
                return Ok(kid.0.wait()?);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let (s, h) = (finish(&mut server)?, finish(&mut helper)?);
    drop(relays);
    drop(relay_kids);
    if !(client.success() && s.success() && h.success()) {
        bail!("the session at {delay_ms} ms failed (client {client}, server {s}, helper {h})");
    }
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
    let results = report["results"]
        .as_array()
        .context("no results in the client's output")?;
    if results.len() as u64 != images {
        bail!(
            "the client reports {} results for {images} images",
            results.len()
        );
    }
    // Every image of an inference reports the inference's figures: one row per inference.
    let per_inference: Vec<&serde_json::Value> = results
        .iter()
        .step_by(batch as usize)
        .map(|r| &r["stats"])
        .collect();
    let secs: Vec<f64> = per_inference
        .iter()
        .map(|st| st["seconds"].as_f64().unwrap_or(f64::NAN) / f64::from(batch))
        .collect();
    let last = &per_inference[per_inference.len() - 1]["comm"];
    Ok(Run {
        one_way_delay_ms: delay_ms,
        seconds_per_image: secs[1..].iter().sum::<f64>() / (secs.len() - 1) as f64,
        first_image_seconds: secs[0],
        per_image_seconds: secs,
        client_bytes_per_image: last["bytes"].as_u64().unwrap_or(0) / u64::from(batch),
        client_flights_per_image: last["rounds"].as_u64().unwrap_or(0),
    })
}

/// A scratch folder removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<Self> {
        let p = std::env::temp_dir().join(format!("knapsec-bench-net-{}", std::process::id()));
        std::fs::create_dir_all(&p).with_context(|| format!("cannot create {}", p.display()))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn bench(ctx: &Context, args: BenchArgs) -> anyhow::Result<()> {
    if let Some(spec) = &args.relay {
        return run_relay(spec);
    }
    let budget = crate::cmd::simulate::parse_budget(&args.graph.budget)?;
    let backend = ctx.registry()?.backend(&args.graph.backend)?;
    if !backend.is_private() {
        bail!(
            "backend {:?} is not private: knapsec party refuses it",
            args.graph.backend
        );
    }
    let options = crate::cmd::simulate::backend_options(
        backend.as_ref(),
        &args.graph.drelu,
        false,
        &args.graph.options,
    )?;
    let (model, weights) = crate::cmd::simulate::bench_model(
        ctx,
        &args.graph.arch,
        args.graph.variant.clone(),
        None,
        budget,
        args.seed,
    )?;
    let batch = u64::from(args.batch);
    let images = args.images.unwrap_or(3 * batch);
    if images < 2 * batch || !images.is_multiple_of(batch) {
        bail!(
            "--images {images} with --batch {batch}: send a multiple of the batch, at least two \
             inferences' worth (e.g. --images {})",
            3 * batch
        );
    }
    let dir = TempDir::new()?;
    let d = dir.0.as_path();
    for role in Role::ALL {
        KeyPair::generate()?.save(&d.join("keys"), role, false)?;
    }
    model.save(&d.join("model"))?;
    weights.save(&d.join("model"))?;
    let shape = model.input_shape();
    let len = shape.iter().map(|&v| v as usize).product::<usize>();
    let inputs = d.join("inputs");
    std::fs::create_dir_all(&inputs)?;
    for i in 0..images {
        let x: Vec<f32> = (0..len)
            .map(|k| (k as f32 * 0.7311 + (args.seed + i) as f32).sin())
            .collect();
        write_npy(&inputs.join(format!("img{i:04}.npy")), shape, &x)?;
    }
    // Sequential rounds: the causal depth with all parties in one process.
    let x: Vec<f32> = (0..len).map(|k| (k as f32 * 0.37).cos()).collect();
    let start = Instant::now();
    let sim = knapsec_runtime::simulate(
        backend.as_ref(),
        &model,
        &weights,
        &x,
        &options,
        Some(Duration::from_secs(600)),
    )?;
    tracing::info!(
        "in-process simulation for the round count: {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let rounds = sim.offline.comm.rounds + sim.online.comm.rounds;
    let lan = match args.mode.as_str() {
        "loopback" => None,
        "namespaces" => Some(Lan::new().context(
            "cannot create the network namespaces (--mode namespaces needs root and iproute2)",
        )?),
        _ => match Lan::new() {
            Ok(lan) => Some(lan),
            Err(e) => {
                tracing::warn!(
                    "network namespaces unavailable ({e:#}): the parties share loopback"
                );
                None
            }
        },
    };
    let mode = if lan.is_some() {
        "namespaces"
    } else {
        "loopback"
    };
    eprintln!(
        "bench net: {}",
        match lan {
            Some(_) =>
                "each party in its own network namespace (client 10.0.0.1, server 10.0.0.2, helper 10.0.0.3) on a bridge",
            None => "the three parties on this host's loopback",
        }
    );
    let mut runs = Vec::new();
    for &delay in &args.delays_ms {
        tracing::info!("one-way delay {delay} ms ({mode})");
        runs.push(run_session(
            d,
            &inputs,
            backend.name(),
            &options,
            images,
            args.batch,
            delay,
            lan.as_ref(),
        )?);
    }
    drop(lan);
    let base = runs
        .iter()
        .find(|r| r.one_way_delay_ms == 0)
        .map(|r| r.seconds_per_image);
    let at20 = runs
        .iter()
        .find(|r| r.one_way_delay_ms == 20)
        .map(|r| r.seconds_per_image);
    let goal_bound_seconds = base.map(|b| rounds as f64 * 0.040 + 1.2 * b);
    let goal_met = goal_bound_seconds.zip(at20).map(|(bound, t)| t <= bound);
    ctx.print_json(&Report {
        bench: "net",
        backend: backend.name().to_string(),
        options: options.clone(),
        arch: args.graph.arch.clone(),
        budget,
        drelus: knapsec_securenn::Plan::new(&model, knapsec_securenn::Options::default())?
            .drelus(),
        images,
        batch: args.batch,
        rounds,
        rounds_online: sim.online.comm.rounds,
        setup_rounds: sim.setup.comm.rounds,
        mode,
        emulation: if mode == "namespaces" {
            "userspace delay relays in front of server and helper, in their namespaces (no sch_netem in this kernel); at 0 ms the parties talk directly over veth links and a bridge"
        } else {
            "userspace delay relays in front of server and helper (no sch_netem in this kernel); 0 ms is direct loopback"
        },
        runs,
        goal_bound_seconds,
        goal_met,
        cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    })
}
