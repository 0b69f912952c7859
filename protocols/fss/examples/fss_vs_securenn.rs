//! Both secure backends on the same ResNet in one run, phase by phase (the set-up of
//! `knapsec bench secure`: the architecture's secure graph, a random block spec at the
//! budget, random weights, reveal the logits). Prints one JSON object per backend.
//!
//! ```text
//! cargo run --release -p knapsec-fss --example fss_vs_securenn -- resnet18-cifar 0.06 exact
//! cargo run --release -p knapsec-fss --example fss_vs_securenn -- resnet50-imagenet 0.06 approx:16 avgpool-stem
//! ```

use knapsec_core::graph_build::random_weights;
use knapsec_core::spec::{BlockSpec, SPEC_FORMAT};
use knapsec_securenn::{DreluMode, Options, Reveal, nets};
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arch = args.first().map_or("resnet18-cifar", String::as_str);
    let budget: f64 = args.get(1).map_or(Ok(0.06), |s| s.parse())?;
    let drelu = DreluMode::parse_cli(args.get(2).map_or("exact", String::as_str))?;
    let variant = args.get(3).cloned();
    let seed = 0u64;
    let arch_options = knapsec_core::ArchOptions {
        variant: variant.clone(),
        ..Default::default()
    };
    let plan = knapsec_arch_resnet::ResNetPlan::new(arch, &arch_options)?;
    let table = plan.layer_table()?;
    let shapes: Vec<_> = table
        .layers
        .iter()
        .map(|l| [l.channels, l.height, l.width])
        .collect();
    let spec = BlockSpec {
        format: SPEC_FORMAT,
        arch: table.arch.clone(),
        layers: table
            .layers
            .iter()
            .map(|l| l.name.clone())
            .zip(nets::random_spec(&shapes, budget, seed))
            .collect(),
    };
    let (model, _) = plan.secure_graph(Some(&spec), 12)?;
    let weights = random_weights(&model, seed);
    let [c, h, w] = model.input_shape();
    let x: Vec<f32> = (0..c * h * w)
        .map(|i| (i as f32 * 0.7311 + seed as f32).sin())
        .collect();
    let options = Options {
        drelu,
        reveal: Reveal::Logits,
    };
    let timeout = Some(Duration::from_secs(600));
    let s = knapsec_securenn::simulate(&model, &weights, &x, options, timeout)?;
    let f = knapsec_fss::simulate(&model, &weights, &x, options, timeout)?;
    let same = s.output == f.output;
    let vname = variant.as_deref().unwrap_or("standard");
    println!(
        "{{\"backend\":\"securenn\",\"arch\":\"{arch}\",\"variant\":\"{vname}\",\"budget\":{budget},\"drelu\":\"{drelu:?}\",\"drelus\":{},\"rounds_online\":{},\"bytes_online\":{},\"bytes_offline\":{},\"key_bytes\":0,\"offline_seconds\":{:.3},\"online_seconds\":{:.3},\"offline_cpu_seconds\":{:.3},\"online_cpu_seconds\":{:.3}}}",
        s.drelus,
        s.online.comm.rounds,
        s.online.comm.bytes,
        s.offline.comm.bytes,
        s.offline.seconds,
        s.online.seconds,
        s.offline.cpu_seconds,
        s.online.cpu_seconds,
    );
    println!(
        "{{\"backend\":\"fss\",\"arch\":\"{arch}\",\"variant\":\"{vname}\",\"budget\":{budget},\"drelu\":\"{drelu:?}\",\"drelus\":{},\"rounds_online\":{},\"bytes_online\":{},\"bytes_offline\":{},\"key_bytes\":{},\"held_bytes\":{:?},\"offline_seconds\":{:.3},\"online_seconds\":{:.3},\"offline_cpu_seconds\":{:.3},\"online_cpu_seconds\":{:.3},\"logits_equal_securenn\":{same}}}",
        f.drelus,
        f.online.comm.rounds,
        f.online.comm.bytes,
        f.offline.comm.bytes,
        f.key_bytes,
        f.held_bytes,
        f.offline.seconds,
        f.online.seconds,
        f.offline.cpu_seconds,
        f.online.cpu_seconds,
    );
    Ok(())
}
