//! Knapsack strategies (issue 5) through the strategy kit: every registered strategy on random
//! problems (proptest) against brute force — the exact ones must equal it, every one must
//! respect the budget; exact strategies never get worse as the budget grows; `mckp-dp` and
//! `mckp-exact` agree to 1e-9 relative on medium problems; the reference layer tables of
//! `knapsec-knapsack` agree with the registered architecture adapters.

use knapsec_core::arch::ArchOptions;
use knapsec_core::knapsack::{McKpProblem, SolveLimits};
use knapsec_core::{LayerTable, Registry};
use knapsec_knapsack::instances;
use knapsec_knapsack::{Budget, Instance};
use knapsec_tests::kits::strategy::{self, Expect};
use proptest::prelude::*;

/// The strategies that promise the optimum.
const EXACT: [&str; 2] = ["mckp-dp", "mckp-exact"];

fn registry() -> Registry {
    knapsec_builtin::registry().unwrap()
}

fn expect(name: &str) -> Expect {
    if EXACT.contains(&name) {
        Expect::Exact
    } else {
        Expect::Heuristic
    }
}

fn arb_problem() -> impl proptest::strategy::Strategy<Value = McKpProblem> {
    let option = (
        0u64..20,
        prop_oneof![9 => 0.0f64..10.0, 1 => Just(f64::INFINITY)],
    );
    let class = proptest::collection::vec(option, 1..5).prop_map(|mut c| {
        c[0].1 = c[0].1.min(9.5);
        c
    });
    (proptest::collection::vec(class, 1..6), 0u64..80)
        .prop_map(|(classes, budget)| McKpProblem::from_classes(&classes, budget))
}

#[test]
fn the_knapsack_strategies_are_registered() {
    let names = registry().strategy_names();
    for n in ["mckp-dp", "mckp-exact", "mckp-greedy", "uniform"] {
        assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn exact_strategies_equal_brute_force_and_all_respect_the_budget(p in arb_problem()) {
        let r = registry();
        let opt = p.exhaustive_optimum();
        for name in r.strategy_names() {
            let s = r.strategy(&name).unwrap();
            match (s.solve(&p, &SolveLimits::default()), opt) {
                (Ok(sol), Some(o)) => {
                    if let Err(e) = strategy::check_answer(&name, &p, &sol, o, expect(&name)) {
                        prop_assert!(false, "{}", e);
                    }
                }
                (Ok(_), None) => prop_assert!(false, "{} answered an infeasible problem", name),
                (Err(e), Some(o)) => prop_assert!(false, "{} refused a feasible problem (optimum {}): {}", name, o, e),
                (Err(_), None) => {}
            }
        }
    }
}

#[test]
fn exact_strategies_never_get_worse_as_the_budget_grows() {
    let r = registry();
    for seed in 0..25 {
        let p = strategy::random_problem(seed, 7, 5, 25);
        for name in EXACT {
            strategy::check_budget_monotone(&*r.strategy(name).unwrap(), &p).unwrap();
        }
    }
}

#[test]
fn dp_and_exact_agree_on_medium_problems() {
    let r = registry();
    let (dp, exact) = (
        r.strategy("mckp-dp").unwrap(),
        r.strategy("mckp-exact").unwrap(),
    );
    for seed in 0..6 {
        let p = strategy::random_problem(1000 + seed, 250, 12, 300);
        strategy::check_agree(&*dp, &*exact, &p, 1e-9).unwrap();
    }
    // The last two stages of ResNet18-CIFAR (3,072 channels) with synthetic distortions.
    let full = instances::reference_table("resnet18-cifar").unwrap();
    let layers = full
        .layers
        .iter()
        .filter(|l| l.height <= 8)
        .cloned()
        .collect();
    let table = LayerTable::new("resnet18-cifar", layers).unwrap();
    let dist = instances::synthetic_distortion(&table, instances::reference_candidates, 3);
    for pct in [3.0, 6.0, 18.0] {
        let inst = Instance::new(&table, &dist, Budget::Ratio(pct / 100.0)).unwrap();
        strategy::check_agree(&*dp, &*exact, &inst.problem, 1e-9).unwrap();
        let e = exact.solve(&inst.problem, &SolveLimits::default()).unwrap();
        assert!(
            e.optimal && e.relative_gap() <= 1e-12,
            "{pct}%: gap {}",
            e.relative_gap()
        );
    }
}

#[test]
fn reference_tables_agree_with_the_registered_adapters() {
    let r = registry();
    for arch in instances::REFERENCE_ARCHS {
        let Ok(adapter) = r.arch(arch) else { continue };
        let registered = adapter.layer_table(&ArchOptions::default()).unwrap();
        let reference = instances::reference_table(arch).unwrap();
        assert_eq!(
            registered, reference,
            "{arch}: registered layer table differs from the reference's"
        );
    }
}
