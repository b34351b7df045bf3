//! Every shipped sweep config parses, names known tasks, and its budgets and spaces are valid.

use petnas_core::inventory::{inventory, EncoderConfig, Family};
use petnas_core::space::SearchSpace;
use petnas_train::sweep::{BudgetValue, SweepConfig};

#[test]
fn shipped_sweep_configs_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sweeps");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().and_then(|x| x.to_str()) != Some("toml") {
            continue;
        }
        let cfg = SweepConfig::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let family = if cfg.model.contains("roberta") { Family::Roberta } else { Family::Bert };
        let inv = inventory(&EncoderConfig::tiny(family));
        for b in &cfg.baselines {
            if b.method != "full" {
                SearchSpace::from_spec(&b.method, &inv).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            }
        }
        for s in &cfg.searches {
            SearchSpace::from_spec(&s.space, &inv).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            for b in &s.budgets {
                if let BudgetValue::Text(t) = b {
                    petnas_core::prune::parse_budget(t).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                }
            }
        }
        n += 1;
    }
    assert!(n >= 3, "expected the paper and MiniLM configs in {}", dir.display());
}
