//! Three `knapsec party` processes on loopback, as a user deploys them (issue 7): keys made
//! with `knapsec keys gen`, one `deploy.ron`, several inferences and several clients in a
//! row, results checked against a cleartext evaluation of the same fixed-point model,
//! handshake refusals (model, options, keys), and each role killed mid-inference.

use knapsec_core::BlockSize;
use knapsec_core::graph::{
    FixedTensor, MODEL_FORMAT, ModelWeights, Node, Op, OutputKind, SecureModel, decode_fixed,
};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const FRAC: u32 = 12;

fn knapsec() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_knapsec"));
    c.env_remove("KNAPSEC_PLUGIN_PATH")
        .env("KNAPSEC_LOG", "info")
        .env("NO_COLOR", "1");
    c
}

/// A deterministic stream of small reals in [-1, 1).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
}

/// conv3×3 (in→c) → block ReLU → conv3×3 (c→c) → ReLU → global average pool → linear (c→4).
fn model(input: [u32; 3], c: u32, seed: u64) -> (SecureModel, ModelWeights) {
    let [ci, h, w] = input;
    let conv = |name: &str| Op::Conv2d {
        weight: format!("{name}.weight"),
        bias: Some(format!("{name}.bias")),
        kernel: [3, 3],
        stride: [1, 1],
        padding: [1, 1],
        dilation: [1, 1],
        groups: 1,
    };
    let blocks: Vec<BlockSize> = (0..c)
        .map(|k| match k % 3 {
            0 => BlockSize::RELU,
            1 => BlockSize::patch(2, 2).unwrap(),
            _ => BlockSize::Identity,
        })
        .collect();
    let nodes = vec![
        Node {
            name: "input".into(),
            op: Op::Input,
            inputs: vec![],
            shape: input,
        },
        Node {
            name: "conv1".into(),
            op: conv("conv1"),
            inputs: vec![0],
            shape: [c, h, w],
        },
        Node {
            name: "relu1".into(),
            op: Op::BlockRelu {
                layer: "relu1".into(),
                blocks,
            },
            inputs: vec![1],
            shape: [c, h, w],
        },
        Node {
            name: "conv2".into(),
            op: conv("conv2"),
            inputs: vec![2],
            shape: [c, h, w],
        },
        Node {
            name: "relu2".into(),
            op: Op::BlockRelu {
                layer: "relu2".into(),
                blocks: vec![BlockSize::RELU; c as usize],
            },
            inputs: vec![3],
            shape: [c, h, w],
        },
        Node {
            name: "pool".into(),
            op: Op::GlobalAvgPool,
            inputs: vec![4],
            shape: [c, 1, 1],
        },
        Node {
            name: "fc".into(),
            op: Op::Linear {
                weight: "fc.weight".into(),
                bias: Some("fc.bias".into()),
            },
            inputs: vec![5],
            shape: [4, 1, 1],
        },
    ];
    let m = SecureModel {
        format: MODEL_FORMAT,
        arch: "deploy-test".into(),
        frac_bits: FRAC,
        output_kind: OutputKind::Classification,
        nodes,
        calibration: None,
    };
    let mut rng = Lcg(seed);
    let mut t = |shape: Vec<usize>, scale: f64| {
        let n = shape.iter().product();
        let data = (0..n)
            .map(|_| knapsec_core::graph::encode_fixed(rng.next() * scale, FRAC))
            .collect();
        FixedTensor { shape, data }
    };
    let mut wts = ModelWeights::default();
    let (ci, c) = (ci as usize, c as usize);
    wts.tensors
        .insert("conv1.weight".into(), t(vec![c, ci, 3, 3], 0.5));
    wts.tensors.insert("conv1.bias".into(), t(vec![c], 0.1));
    wts.tensors
        .insert("conv2.weight".into(), t(vec![c, c, 3, 3], 0.3));
    wts.tensors.insert("conv2.bias".into(), t(vec![c], 0.1));
    wts.tensors.insert("fc.weight".into(), t(vec![4, c], 1.0));
    wts.tensors.insert("fc.bias".into(), t(vec![4], 0.1));
    m.validate().unwrap();
    wts.check_against(&m).unwrap();
    (m, wts)
}

/// The same network in the clear, in f64 (the oracle).
fn cleartext(m: &SecureModel, w: &ModelWeights, x: &[f32]) -> Vec<f64> {
    let get = |n: &str| {
        w.tensors[n]
            .data
            .iter()
            .map(|&v| decode_fixed(v, FRAC))
            .collect::<Vec<f64>>()
    };
    let mut acts: Vec<Vec<f64>> = vec![x.iter().map(|&v| v as f64).collect()];
    for node in &m.nodes[1..] {
        let src = &acts[node.inputs[0]];
        let [_, h, wd] = m.nodes[node.inputs[0]].shape.map(|d| d as usize);
        let cin = m.nodes[node.inputs[0]].shape[0] as usize;
        let [c, oh, ow] = node.shape.map(|d| d as usize);
        let out = match &node.op {
            Op::Conv2d { weight, bias, .. } => {
                let (k, b) = (get(weight), get(bias.as_ref().unwrap()));
                let mut y = vec![0.0; c * oh * ow];
                for o in 0..c {
                    for i in 0..oh {
                        for j in 0..ow {
                            let mut s = b[o];
                            for ic in 0..cin {
                                for di in 0..3 {
                                    for dj in 0..3 {
                                        let (ii, jj) = (
                                            i as isize + di as isize - 1,
                                            j as isize + dj as isize - 1,
                                        );
                                        if ii >= 0
                                            && jj >= 0
                                            && (ii as usize) < h
                                            && (jj as usize) < wd
                                        {
                                            s += k[((o * cin + ic) * 3 + di) * 3 + dj]
                                                * src[(ic * h + ii as usize) * wd + jj as usize];
                                        }
                                    }
                                }
                            }
                            y[(o * oh + i) * ow + j] = s;
                        }
                    }
                }
                y
            }
            Op::BlockRelu { blocks, .. } => {
                let mut y = src.clone();
                for (ch, b) in blocks.iter().enumerate() {
                    let (bh, bw) = match b {
                        BlockSize::Patch { h, w } => (*h as usize, *w as usize),
                        _ => continue,
                    };
                    for pi in (0..h).step_by(bh) {
                        for pj in (0..wd).step_by(bw) {
                            let idx: Vec<usize> = (pi..(pi + bh).min(h))
                                .flat_map(|i| {
                                    (pj..(pj + bw).min(wd)).map(move |j| (ch * h + i) * wd + j)
                                })
                                .collect();
                            if idx.iter().map(|&q| src[q]).sum::<f64>() < 0.0 {
                                idx.iter().for_each(|&q| y[q] = 0.0);
                            }
                        }
                    }
                }
                y
            }
            Op::GlobalAvgPool => (0..c)
                .map(|ch| src[ch * h * wd..(ch + 1) * h * wd].iter().sum::<f64>() / (h * wd) as f64)
                .collect(),
            Op::Linear { weight, bias } => {
                let (k, b) = (get(weight), get(bias.as_ref().unwrap()));
                (0..c)
                    .map(|o| b[o] + (0..cin).map(|i| k[o * cin + i] * src[i]).sum::<f64>())
                    .collect()
            }
            other => panic!("the oracle does not know {other:?}"),
        };
        acts.push(out);
    }
    acts.pop().unwrap()
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Deploy {
    dir: tempfile::TempDir,
    input_shape: [u32; 3],
    model: SecureModel,
    weights: ModelWeights,
}

impl Deploy {
    /// Keys for the three roles, a model in `model/`, and `deploy.ron`.
    fn new(input: [u32; 3], channels: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for role in ["client", "server", "helper"] {
            let out = knapsec()
                .args(["keys", "gen", "--role", role, "-o"])
                .arg(dir.path().join("keys"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let (model, weights) = model(input, channels, 7);
        let mdir = dir.path().join("model");
        std::fs::create_dir_all(&mdir).unwrap();
        model.save(&mdir).unwrap();
        weights.save(&mdir).unwrap();
        let d = Deploy {
            dir,
            input_shape: input,
            model,
            weights,
        };
        d.write_config("deploy.ron", "model", "()");
        d
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn write_config(&self, name: &str, model: &str, options: &str) {
        let (sp, hp) = (free_port(), free_port());
        self.write_config_ports(
            name,
            model,
            options,
            sp,
            hp,
            "keys/client.pub",
            "keys/{role}.key",
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn write_config_ports(
        &self,
        name: &str,
        model: &str,
        options: &str,
        sp: u16,
        hp: u16,
        client_pub: &str,
        key: &str,
    ) {
        let text = format!(
            r#"(
    format: 1,
    client: (public_key: "{client_pub}"),
    server: (address: "127.0.0.1:{sp}", public_key: "keys/server.pub"),
    helper: (address: "127.0.0.1:{hp}", public_key: "keys/helper.pub"),
    private_key: "{key}",
    model: "{model}",
    backend: "securenn",
    options: "{options}",
    timeouts: (connect_s: 10, handshake_s: 5, recv_s: 20, linger_s: 2),
)"#
        );
        std::fs::write(self.path(name), text).unwrap();
    }

    /// The ports of a config written by `write_config`.
    fn ports(&self, name: &str) -> (u16, u16) {
        let text = std::fs::read_to_string(self.path(name)).unwrap();
        let port = |tag: &str| {
            let i = text.find(tag).unwrap() + tag.len();
            let s = &text[i..];
            let a = s.find("127.0.0.1:").unwrap() + 10;
            s[a..a + s[a..].find('"').unwrap()].parse().unwrap()
        };
        (port("server:"), port("helper:"))
    }

    fn inputs(&self, n: usize, seed: u64) -> PathBuf {
        let dir = self.path(&format!("inputs-{seed}"));
        std::fs::create_dir_all(&dir).unwrap();
        let len: usize = self.input_shape.iter().map(|&d| d as usize).product();
        let mut rng = Lcg(seed);
        for i in 0..n {
            let x: Vec<f32> = (0..len).map(|_| rng.next() as f32).collect();
            write_npy(&dir.join(format!("img{i:03}.npy")), self.input_shape, &x);
        }
        dir
    }

    /// Starts a party with stderr captured to `log-NAME.txt`.
    fn spawn(&self, role: &str, config: &str, extra: &[&str], log: &str) -> Child {
        let err = std::fs::File::create(self.path(&format!("log-{log}.txt"))).unwrap();
        knapsec()
            .args(["party", "--role", role, "--config"])
            .arg(self.path(config))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap()
    }

    fn log(&self, log: &str) -> String {
        let mut s = String::new();
        std::fs::File::open(self.path(&format!("log-{log}.txt")))
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        s
    }
}

/// Waits at most `secs` for `child`; kills it and returns `None` on timeout.
fn wait(child: &mut Child, secs: u64) -> Option<ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn read_npy_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let hl = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    bytes[10 + hl..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn three_processes_serve_several_inferences_and_clients() {
    let d = Deploy::new([2, 6, 6], 6);
    let mut server = d.spawn("server", "deploy.ron", &["--sessions", "2"], "server");
    let mut helper = d.spawn("helper", "deploy.ron", &["--sessions", "2"], "helper");
    // First client: a folder of three images; second client: one file.
    let inputs = d.inputs(3, 11);
    for (k, input) in [inputs.clone(), inputs.join("img001.npy")]
        .into_iter()
        .enumerate()
    {
        let out = d.path(&format!("result{k}.json"));
        let mut client = knapsec()
            .args(["party", "--role", "client", "--config"])
            .arg(d.path("deploy.ron"))
            .arg("--input")
            .arg(&input)
            .arg("-o")
            .arg(&out)
            .spawn()
            .unwrap();
        let status = wait(&mut client, 60).expect("the client finishes");
        assert!(
            status.success(),
            "client {k} failed; server log:\n{}\nhelper log:\n{}",
            d.log("server"),
            d.log("helper")
        );
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        assert_eq!(report["model_hash"], d.model.public_hash());
        let results = report["results"].as_array().unwrap();
        assert_eq!(results.len(), if k == 0 { 3 } else { 1 });
        for r in results {
            let file = PathBuf::from(r["input"].as_str().unwrap());
            let want = cleartext(&d.model, &d.weights, &read_npy_f32(&file));
            let got: Vec<f64> = r["output"]["Logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() < 0.02,
                    "{}: secure {got:?} vs cleartext {want:?}",
                    file.display()
                );
            }
            let label = (0..want.len())
                .max_by(|&a, &b| want[a].total_cmp(&want[b]))
                .unwrap();
            assert_eq!(r["label"].as_u64().unwrap() as usize, label);
            assert!(r["stats"]["comm"]["bytes"].as_u64().unwrap() > 0);
            // The same inference by `knapsec simulate` (three parties in one process).
            let sim = knapsec()
                .args(["simulate", "--json", "--model"])
                .arg(d.path("model"))
                .arg("--input")
                .arg(&file)
                .output()
                .unwrap();
            assert!(
                sim.status.success(),
                "{}",
                String::from_utf8_lossy(&sim.stderr)
            );
            let sim: serde_json::Value = serde_json::from_slice(&sim.stdout).unwrap();
            let sim: Vec<f64> = sim["output"]["Logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            // Identical up to the last bits of the fixed point: local truncations are off by
            // one ulp with a probability that depends on the random shares.
            let ulp = 1.0 / (1u64 << FRAC) as f64;
            let diff = got
                .iter()
                .zip(&sim)
                .map(|(g, s)| (g - s).abs())
                .fold(0.0, f64::max);
            eprintln!(
                "largest difference deployed vs simulated: {diff} ({} ulp)",
                diff / ulp
            );
            assert!(diff <= 4.0 * ulp, "deployed {got:?} vs simulated {sim:?}");
        }
    }
    // Two sessions served: both exit successfully.
    assert!(
        wait(&mut server, 20).expect("server exits").success(),
        "{}",
        d.log("server")
    );
    assert!(
        wait(&mut helper, 20).expect("helper exits").success(),
        "{}",
        d.log("helper")
    );
}

/// Starts server and helper with `server_cfg`/`helper_cfg` (and `--exit-on-error`), runs a
/// client with `client_cfg`; returns the three exit statuses (within 20 s) and the client's
/// stderr.
fn run_mismatch(
    d: &Deploy,
    server_cfg: &str,
    helper_cfg: &str,
    client_cfg: &str,
) -> ([ExitStatus; 3], String) {
    let mut server = d.spawn("server", server_cfg, &["--exit-on-error"], "server");
    let mut helper = d.spawn("helper", helper_cfg, &["--exit-on-error"], "helper");
    let input = d.inputs(1, 5);
    let mut client = d.spawn(
        "client",
        client_cfg,
        &[
            "--input",
            input.to_str().unwrap(),
            "-o",
            d.path("r.json").to_str().unwrap(),
        ],
        "client",
    );
    let c = wait(&mut client, 20).expect("the client stops");
    let s = wait(&mut server, 20).expect("the server stops");
    let h = wait(&mut helper, 20).expect("the helper stops");
    ([c, s, h], d.log("client"))
}

#[test]
fn handshake_refuses_mismatched_models_and_options() {
    let d = Deploy::new([1, 4, 4], 3);
    // Another model (other weights do not matter; another shape changes the public part).
    let (other, other_w) = model([1, 4, 4], 4, 9);
    let odir = d.path("other-model");
    std::fs::create_dir_all(&odir).unwrap();
    other.save(&odir).unwrap();
    other_w.save(&odir).unwrap();
    let (sp, hp) = d.ports("deploy.ron");
    d.write_config_ports(
        "server-other.ron",
        "other-model",
        "()",
        sp,
        hp,
        "keys/client.pub",
        "keys/{role}.key",
    );
    let (st, client_err) = run_mismatch(&d, "server-other.ron", "deploy.ron", "deploy.ron");
    assert!(
        st.iter().all(|s| !s.success()),
        "all three must stop with an error: {st:?}"
    );
    assert!(
        client_err.contains("model hash") && client_err.contains("differs"),
        "{client_err}"
    );
    assert!(
        client_err.contains(&other.public_hash()) && client_err.contains(&d.model.public_hash()),
        "{client_err}"
    );
    let helper_err = d.log("helper");
    assert!(
        helper_err.contains("model hash"),
        "the helper says why it stopped: {helper_err}"
    );
    assert!(!d.path("r.json").exists(), "no output on failure");

    // Same model, other protocol options on the helper.
    let (sp, hp) = (free_port(), free_port());
    for (name, opts) in [
        ("a.ron", "()"),
        ("b.ron", "(drelu: Approx(bits: 20, lsb_ignored: 4))"),
    ] {
        d.write_config_ports(
            name,
            "model",
            opts,
            sp,
            hp,
            "keys/client.pub",
            "keys/{role}.key",
        );
    }
    let (st, client_err) = run_mismatch(&d, "a.ron", "b.ron", "a.ron");
    assert!(st.iter().all(|s| !s.success()), "{st:?}");
    assert!(
        client_err.contains("backend options") && client_err.contains("Approx"),
        "{client_err}"
    );
    // The server learns the reason when the abort message reaches it before the helper's
    // connection closes; otherwise its error names the helper that went away (a known race
    // in abort propagation, seen once in CI runs).
    let server_err = d.log("server");
    assert!(
        server_err.contains("backend options") || server_err.contains("helper"),
        "{server_err}"
    );
}

#[test]
fn a_party_with_the_wrong_key_is_refused() {
    let d = Deploy::new([1, 4, 4], 3);
    // An impostor client with its own key pair, which the server and helper do not know.
    let out = knapsec()
        .args(["keys", "gen", "--role", "client", "-o"])
        .arg(d.path("impostor"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let (sp, hp) = d.ports("deploy.ron");
    d.write_config_ports(
        "impostor.ron",
        "model",
        "()",
        sp,
        hp,
        "impostor/client.pub",
        "impostor/{role}.key",
    );
    let mut server = d.spawn("server", "deploy.ron", &["--sessions", "1"], "server");
    let mut helper = d.spawn("helper", "deploy.ron", &["--sessions", "1"], "helper");
    let input = d.inputs(1, 3);
    let out = knapsec()
        .args(["party", "--role", "client", "--config"])
        .arg(d.path("impostor.ron"))
        .arg("--input")
        .arg(&input)
        .arg("-o")
        .arg(d.path("r.json"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("refused the connection") && err.contains("authentication failed"),
        "{err}"
    );
    // The server and helper refused the connection but keep serving: the real client succeeds.
    let out = knapsec()
        .args(["party", "--role", "client", "--config"])
        .arg(d.path("deploy.ron"))
        .arg("--input")
        .arg(&input)
        .arg("-o")
        .arg(d.path("r.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(wait(&mut server, 20).expect("server exits").success());
    assert!(wait(&mut helper, 20).expect("helper exits").success());
    assert!(
        d.log("server").contains("refused a connection"),
        "{}",
        d.log("server")
    );
}

#[test]
fn killing_any_party_mid_inference_stops_the_others_within_10_s() {
    // Large enough that an inference takes a while, many images so the session is long.
    let d = Deploy::new([3, 24, 24], 16);
    let inputs = d.inputs(200, 17);
    for (victim, order) in [("client", 0usize), ("server", 1), ("helper", 2)] {
        let (sp, hp) = (free_port(), free_port());
        let cfg = format!("kill-{victim}.ron");
        d.write_config_ports(
            &cfg,
            "model",
            "()",
            sp,
            hp,
            "keys/client.pub",
            "keys/{role}.key",
        );
        let out = d.path("never.json");
        let mut kids = [
            d.spawn(
                "client",
                &cfg,
                &[
                    "--input",
                    inputs.to_str().unwrap(),
                    "-o",
                    out.to_str().unwrap(),
                ],
                &format!("{victim}-client"),
            ),
            d.spawn(
                "server",
                &cfg,
                &["--exit-on-error"],
                &format!("{victim}-server"),
            ),
            d.spawn(
                "helper",
                &cfg,
                &["--exit-on-error"],
                &format!("{victim}-helper"),
            ),
        ];
        // Wait until the server has served two inferences: the session is well under way.
        let start = Instant::now();
        while !d.log(&format!("{victim}-server")).contains("index=1") {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no progress: {}",
                d.log(&format!("{victim}-server"))
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        kids[order].kill().unwrap();
        kids[order].wait().unwrap();
        let killed_at = Instant::now();
        for (i, role) in ["client", "server", "helper"].iter().enumerate() {
            if i == order {
                continue;
            }
            let status = wait(&mut kids[i], 15)
                .unwrap_or_else(|| panic!("the {role} hangs after the {victim} died"));
            assert!(
                killed_at.elapsed() < Duration::from_secs(10),
                "the {role} took {:?}",
                killed_at.elapsed()
            );
            assert!(
                !status.success(),
                "the {role} must fail when the {victim} dies"
            );
            let log = d.log(&format!("{victim}-{role}"));
            let last = log
                .lines()
                .rfind(|l| l.starts_with("error:"))
                .unwrap_or_else(|| panic!("no error line: {log}"));
            eprintln!("{victim} killed, {role}: {last}");
            assert!(
                last.contains(victim),
                "the {role}'s error names the {victim}: {last}"
            );
            assert!(
                last.contains("layer"),
                "the {role}'s error names the layer: {last}"
            );
        }
        assert!(!out.exists());
    }
}

#[test]
fn a_cleartext_backend_is_refused_unless_insecure_cleartext_and_then_warns() {
    let d = Deploy::new([1, 4, 4], 3);
    let text = std::fs::read_to_string(d.path("deploy.ron")).unwrap();
    std::fs::write(
        d.path("plain.ron"),
        text.replace("backend: \"securenn\"", "backend: \"plain\""),
    )
    .unwrap();
    for role in ["server", "helper"] {
        let mut p = d.spawn(role, "plain.ron", &["--sessions", "1"], role);
        let st = wait(&mut p, 20).expect("a refused party exits");
        assert!(!st.success());
        let log = d.log(role);
        assert!(
            log.contains("not private") && log.contains("--insecure-cleartext"),
            "{log}"
        );
    }
    // With the flag the three parties run it, and each one warns.
    let flag = ["--sessions", "1", "--insecure-cleartext"];
    let mut server = d.spawn("server", "plain.ron", &flag, "server");
    let mut helper = d.spawn("helper", "plain.ron", &flag, "helper");
    let input = d.inputs(1, 4);
    let out = d.path("plain.json");
    let mut client = d.spawn(
        "client",
        "plain.ron",
        &[
            "--input",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--insecure-cleartext",
        ],
        "client",
    );
    for (p, role) in [
        (&mut client, "client"),
        (&mut server, "server"),
        (&mut helper, "helper"),
    ] {
        let st = wait(p, 30).unwrap_or_else(|| panic!("the {role} hangs"));
        let log = d.log(role);
        assert!(st.success(), "{role}: {log}");
        assert!(log.contains("INSECURE"), "the {role} warns: {log}");
    }
    assert!(out.exists());
}

#[test]
fn a_party_never_loads_the_plugin_path_folders() {
    let d = Deploy::new([1, 4, 4], 3);
    // A "plugin" folder with a library that cannot load: any command that reads the plugin
    // path fails on it.
    let plugins = d.path("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::write(plugins.join("libevil.so"), b"not a shared library").unwrap();
    let listed = knapsec()
        .args(["plugins", "list"])
        .env("KNAPSEC_PLUGIN_PATH", &plugins)
        .output()
        .unwrap();
    assert!(
        !listed.status.success(),
        "the plugin path is read by other commands"
    );
    let out = knapsec()
        .args(["party", "--role", "server", "--sessions", "0", "--config"])
        .arg(d.path("deploy.ron"))
        .env("KNAPSEC_PLUGIN_PATH", &plugins)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "knapsec party must ignore KNAPSEC_PLUGIN_PATH: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Checks a client's result file: `n` results, each close to the cleartext evaluation.
fn check_results(d: &Deploy, out: &Path, n: usize) {
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), n);
    for r in results {
        let file = PathBuf::from(r["input"].as_str().unwrap());
        let want = cleartext(&d.model, &d.weights, &read_npy_f32(&file));
        let got: Vec<f64> = r["output"]["Logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 0.02, "secure {got:?} vs cleartext {want:?}");
        }
    }
}

/// Strangers on the network against one port until `stop`: `idle` connections opened once
/// and held without a word, and `noisy` ones that send random bytes (and reconnect, after
/// 50 ms, when the party closes them).
fn strangers(
    port: u16,
    idle: usize,
    noisy: usize,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<std::thread::JoinHandle<()>> {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    let addr = format!("127.0.0.1:{port}");
    let mut threads = Vec::new();
    for k in 0..idle + noisy {
        let (addr, stop) = (addr.clone(), std::sync::Arc::clone(stop));
        threads.push(std::thread::spawn(move || {
            let mut rng = Lcg(k as u64 + 1);
            if k < idle {
                let _held = std::net::TcpStream::connect(&addr).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                return;
            }
            while !stop.load(Ordering::Relaxed) {
                if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
                    let _ = s.set_write_timeout(Some(Duration::from_millis(100)));
                    while !stop.load(Ordering::Relaxed) {
                        let junk: Vec<u8> = (0..512).map(|_| (rng.next() * 128.0) as u8).collect();
                        if s.write_all(&junk).is_err() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }));
    }
    threads
}

#[test]
fn strangers_on_the_network_cannot_stall_server_or_helper() {
    let d = Deploy::new([2, 6, 6], 6);
    let (sp, hp) = d.ports("deploy.ron");
    // Three sessions; even with --exit-on-error the strangers must not make one fail.
    let flags = ["--sessions", "3", "--exit-on-error"];
    let mut server = d.spawn("server", "deploy.ron", &flags, "server");
    let mut helper = d.spawn("helper", "deploy.ron", &flags, "helper");
    let inputs = d.inputs(2, 5);
    let run_client = |k: usize| {
        let out = d.path(&format!("r{k}.json"));
        let start = Instant::now();
        let mut client = d.spawn(
            "client",
            "deploy.ron",
            &[
                "--input",
                inputs.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
            ],
            &format!("client{k}"),
        );
        let status = wait(&mut client, 60).expect("the client finishes");
        let took = start.elapsed();
        assert!(
            status.success(),
            "client {k}:\n{}\nserver:\n{}\nhelper:\n{}",
            d.log(&format!("client{k}")),
            d.log("server"),
            d.log("helper")
        );
        check_results(&d, &out, 2);
        took
    };
    // The first run also waits for server and helper to listen; the second is the reference.
    run_client(0);
    let unloaded = run_client(1);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = strangers(sp, 20, 5, &stop);
    load.extend(strangers(hp, 20, 5, &stop));
    std::thread::sleep(Duration::from_millis(500));
    let loaded = run_client(2);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    eprintln!(
        "client unloaded {:.2} s, with 25 strangers on each port {:.2} s",
        unloaded.as_secs_f64(),
        loaded.as_secs_f64()
    );
    assert!(
        loaded <= unloaded + Duration::from_secs(2),
        "loaded {loaded:?} vs unloaded {unloaded:?}"
    );
    for (p, role) in [(&mut server, "server"), (&mut helper, "helper")] {
        let st = wait(p, 20).unwrap_or_else(|| panic!("the {role} hangs"));
        assert!(st.success(), "{role}: {}", d.log(role));
    }
}

#[test]
fn a_client_announcing_a_frame_beyond_the_plan_ends_the_session_naming_it() {
    use knapsec_core::backend::SecureBackend;
    use knapsec_core::transport::Role;
    use knapsec_net::frame::FrameKind;
    use knapsec_net::secure_channel::SecureChannel;
    use knapsec_runtime::handshake::{Control, Hello};
    let d = Deploy::new([2, 6, 6], 6);
    let flags = ["--sessions", "1", "--exit-on-error"];
    let mut server = d.spawn("server", "deploy.ron", &flags, "server");
    let mut helper = d.spawn("helper", "deploy.ron", &flags, "helper");
    // A client holding the real client key, driven by hand: it does everything right until
    // it announces a frame of 2 MiB, far below max_frame_mib (1 GiB) but beyond the largest
    // message this small model's plan allows.
    let dep = knapsec_runtime::Deployment::load(&d.path("deploy.ron"), Role::Client).unwrap();
    let backend = knapsec_securenn::SecureNn::default();
    let options = backend.canonical_options("()").unwrap();
    let bound = backend.max_message(&d.model, "()").unwrap().unwrap();
    let big = 2 << 20;
    assert!(
        (bound as usize) < big && big < dep.max_frame,
        "bound {bound}"
    );
    let hello = Hello::new(
        Role::Client,
        [5; 16],
        "securenn",
        &backend.version(),
        &options,
        &d.model.public_hash(),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut chans = Vec::new();
        for peer in [Role::Server, Role::Helper] {
            let address = if peer == Role::Server {
                &dep.server_address
            } else {
                &dep.helper_address
            };
            let start = Instant::now();
            let stream = loop {
                match tokio::net::TcpStream::connect(address.as_str()).await {
                    Ok(s) => break s,
                    Err(_) if start.elapsed() < Duration::from_secs(20) => {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    Err(e) => panic!("the {peer} does not listen: {e}"),
                }
            };
            let mut ch = SecureChannel::initiate(
                Role::Client,
                peer,
                stream,
                &dep.keypair,
                dep.peers.get(peer).unwrap(),
                4 << 20,
            )
            .await
            .unwrap();
            ch.send_frame(FrameKind::Data, &hello.to_bytes())
                .await
                .unwrap();
            let theirs = ch.recv_frame().await.unwrap();
            assert_eq!(theirs.kind, FrameKind::Data);
            chans.push(ch);
        }
        for ch in &mut chans {
            let ready = ch.recv_frame().await.unwrap();
            assert_eq!(ready.payload, Control::Ready.to_bytes());
            ch.send_frame(FrameKind::Data, &Control::Infer { index: 0 }.to_bytes())
                .await
                .unwrap();
        }
        // The server stops reading at the header, so the rest may not go through.
        let _ = chans[0].send_frame(FrameKind::Data, &vec![0u8; big]).await;
        // Its abort may reach this client before the connection drops.
        if let Ok(Ok(f)) =
            tokio::time::timeout(Duration::from_secs(20), chans[0].recv_frame()).await
            && f.kind == FrameKind::Abort
        {
            let reason = String::from_utf8_lossy(&f.payload).into_owned();
            assert!(
                reason.contains(&format!("frame of {big} bytes")),
                "{reason}"
            );
        }
    });
    let st = wait(&mut server, 20).expect("the server stops");
    assert!(!st.success());
    let log = d.log("server");
    assert!(
        log.contains(&format!("frame of {big} bytes exceeds the maximum of"))
            && log.contains("client"),
        "{log}"
    );
    let _ = wait(&mut helper, 20);
}
