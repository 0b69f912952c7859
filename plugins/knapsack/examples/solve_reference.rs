//! Solves one synthetic reference instance and prints the benchmark row as JSON:
//! `cargo run --release -p knapsec-knapsack --example solve_reference -- resnet18-cifar 6 mckp-exact [seed]`.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: solve_reference NETWORK PERCENT STRATEGY [SEED]");
        std::process::exit(2);
    }
    let percent: f64 = args[1].parse().expect("PERCENT is a number");
    let seed: u64 = args
        .get(3)
        .map(|s| s.parse().expect("SEED is an integer"))
        .unwrap_or(1);
    let limits = knapsec_knapsack::SolveLimits::default();
    match knapsec_knapsack::bench::run_case(
        &args[0],
        percent,
        &args[2],
        seed,
        knapsec_knapsack::instances::DEFAULT_NOISE,
        &limits,
    ) {
        Ok(row) => println!("{}", serde_json::to_string(&row).expect("serialises")),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
