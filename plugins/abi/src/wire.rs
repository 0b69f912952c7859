//! The serialised requests and answers that travel through [`crate::ffi::CallFn`], as RON
//! text (UTF-8): [`encode`] and [`decode`]. RON rather than JSON because knapsack values use
//! `+inf` for forbidden options, which JSON cannot carry.
//!
//! Architecture descriptions answer [`Request::Describe`], [`Request::LayerTable`] and
//! [`Request::Candidates`]; knapsack strategies answer [`Request::Describe`] and
//! [`Request::Solve`]. A refusal is a [`WireError`] with status
//! [`crate::ffi::STATUS_ERROR`].

use knapsec_core::arch::ArchOptions;
use knapsec_core::block::BlockSize;
use knapsec_core::knapsack::{KnapsackError, McKpProblem, SolveLimits};
use knapsec_core::layer::{LayerTable, ReluLayer};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// One request to a plugin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Any plugin: answers a [`Description`].
    Describe,
    /// Architecture: answers a [`LayerTableAnswer`].
    LayerTable {
        /// The architecture's options.
        options: ArchOptions,
    },
    /// Architecture: answers `Vec<BlockSize>`.
    Candidates {
        /// The layer.
        layer: ReluLayer,
    },
    /// Knapsack strategy: answers a `McKpSolution`.
    Solve {
        /// The problem to solve.
        problem: McKpProblem,
        /// How long to search and how close to the optimum to stop.
        limits: WireLimits,
    },
}

impl Request {
    /// The request's name: `describe`, `layer_table`, `candidates` or `solve`.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Describe => "describe",
            Request::LayerTable { .. } => "layer_table",
            Request::Candidates { .. } => "candidates",
            Request::Solve { .. } => "solve",
        }
    }
}

/// Serialises a request, answer or refusal for the wire.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    ron::to_string(value)
        .map(String::into_bytes)
        .map_err(|e| e.to_string())
}

/// Reads a request, answer or refusal from the wire.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 text: {e}"))?;
    ron::from_str(text).map_err(|e| e.to_string())
}

/// The answer to [`Request::Describe`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Description {
    /// `"architecture"` or `"knapsack-strategy"`.
    pub kind: String,
    /// Registry name.
    pub name: String,
    /// The plugin's own version.
    pub version: String,
    /// One line for `knapsec plugins list`.
    pub description: String,
}

/// The answer to [`Request::LayerTable`]: the table and, for each of its layers in order, the
/// candidate patch sizes, so that a host needs one call per table and every failure surfaces
/// where it can be reported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerTableAnswer {
    /// The layer table.
    pub table: LayerTable,
    /// Candidate patch sizes per layer, in the table's order.
    pub candidates: Vec<Vec<BlockSize>>,
}

/// [`SolveLimits`] on the wire (a duration in milliseconds).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireLimits {
    /// Time limit in milliseconds, if any.
    pub time_ms: Option<u64>,
    /// Relative gap to the lower bound at which a search may stop.
    pub relative_gap: f64,
}

impl From<&SolveLimits> for WireLimits {
    fn from(l: &SolveLimits) -> Self {
        WireLimits {
            time_ms: l
                .time
                .map(|d| d.as_millis().min(u128::from(u64::MAX)) as u64),
            relative_gap: l.relative_gap,
        }
    }
}

impl From<&WireLimits> for SolveLimits {
    fn from(l: &WireLimits) -> Self {
        SolveLimits {
            time: l.time_ms.map(Duration::from_millis),
            relative_gap: l.relative_gap,
        }
    }
}

/// A plugin's refusal of a request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireError {
    /// One line saying why.
    pub message: String,
    /// For knapsack strategies: the typed error, when it is one the host knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knapsack: Option<WireKnapsackError>,
}

/// The typed knapsack errors of `knapsec_core::knapsack::KnapsackError`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireKnapsackError {
    /// No choice fits the budget.
    Infeasible {
        /// The cheapest choice's cost.
        min_cost: u64,
        /// The budget.
        budget: u64,
    },
    /// A class has no options.
    EmptyClass {
        /// The class.
        class: usize,
    },
}

impl WireError {
    /// A refusal with a message only.
    pub fn new(message: impl Into<String>) -> Self {
        WireError {
            message: message.into(),
            knapsack: None,
        }
    }

    /// The wire form of a knapsack error.
    pub fn from_knapsack(e: &KnapsackError) -> Self {
        // Other errors travel as their message.
        let knapsack = if let KnapsackError::Infeasible { min_cost, budget } = *e {
            Some(WireKnapsackError::Infeasible { min_cost, budget })
        } else if let KnapsackError::EmptyClass { class } = *e {
            Some(WireKnapsackError::EmptyClass { class })
        } else {
            None
        };
        WireError {
            message: e.to_string(),
            knapsack,
        }
    }

    /// Back to a knapsack error of strategy `strategy`.
    pub fn into_knapsack(self, strategy: &str) -> KnapsackError {
        match self.knapsack {
            Some(WireKnapsackError::Infeasible { min_cost, budget }) => {
                KnapsackError::Infeasible { min_cost, budget }
            }
            Some(WireKnapsackError::EmptyClass { class }) => KnapsackError::EmptyClass { class },
            None => KnapsackError::Strategy {
                strategy: strategy.to_string(),
                message: self.message,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_ron_with_infinite_values() {
        let r = Request::Candidates {
            layer: ReluLayer::new("a", 2, 3, 4),
        };
        let bytes = encode(&r).unwrap();
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            r#"candidates(layer:(name:"a",channels:2,height:3,width:4))"#
        );
        assert_eq!(decode::<Request>(&bytes).unwrap(), r);
        assert_eq!(encode(&Request::Describe).unwrap(), b"describe");
        let problem = McKpProblem::from_classes(&[vec![(u64::MAX, f64::INFINITY), (0, -0.5)]], 7);
        let r = Request::Solve {
            problem,
            limits: WireLimits {
                time_ms: None,
                relative_gap: 0.0,
            },
        };
        assert_eq!(decode::<Request>(&encode(&r).unwrap()).unwrap(), r);
        let answer = LayerTableAnswer {
            table: LayerTable::new("t", vec![ReluLayer::new("a", 1, 2, 2)]).unwrap(),
            candidates: vec![vec![BlockSize::RELU, BlockSize::Identity, BlockSize::Zero]],
        };
        assert_eq!(
            decode::<LayerTableAnswer>(&encode(&answer).unwrap()).unwrap(),
            answer
        );
        assert!(decode::<Request>(b"this is not RON").is_err());
        assert!(
            decode::<Request>(&[0xff, 0xfe])
                .unwrap_err()
                .contains("UTF-8")
        );
    }

    #[test]
    fn knapsack_errors_keep_their_type() {
        let e = KnapsackError::Infeasible {
            min_cost: 10,
            budget: 3,
        };
        let back = WireError::from_knapsack(&e).into_knapsack("s");
        assert!(matches!(
            back,
            KnapsackError::Infeasible {
                min_cost: 10,
                budget: 3
            }
        ));
        let e = KnapsackError::Strategy {
            strategy: "s".into(),
            message: "no".into(),
        };
        assert!(matches!(
            WireError::from_knapsack(&e).into_knapsack("s"),
            KnapsackError::Strategy { .. }
        ));
    }

    #[test]
    fn limits_round_trip() {
        let l = SolveLimits {
            time: Some(Duration::from_millis(1500)),
            relative_gap: 0.01,
        };
        let back = SolveLimits::from(&WireLimits::from(&l));
        assert_eq!(back.time, l.time);
        assert_eq!(back.relative_gap, l.relative_gap);
    }
}
