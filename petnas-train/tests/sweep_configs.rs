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
        let family = if cfg.model.contains("roberta") {
            Family::Roberta
        } else {
            Family::Bert
        };
        let inv = inventory(&EncoderConfig::tiny(family));
        for b in &cfg.baselines {
            if b.method != "full" {
                SearchSpace::from_spec(&b.method, &inv)
                    .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            }
        }
        for s in &cfg.searches {
            SearchSpace::from_spec(&s.space, &inv)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            for b in s
                .budgets
                .iter()
                .chain(s.budgets_per_task.values().flatten())
            {
                if let BudgetValue::Text(t) = b {
                    petnas_core::prune::parse_budget(t)
                        .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                }
            }
        }
        n += 1;
    }
    assert!(
        n >= 3,
        "expected the paper and MiniLM configs in {}",
        dir.display()
    );
}

/// The MiniLM configs plan on the real model and GLUE data (as `--dry-run` does): the Table 1
/// config halves rank-16 MaM, the Table 2 budgets stay inside BitFit, and the cost estimate
/// prices full fine-tuning at its own (slower) rate.
#[test]
fn minilm_configs_plan_on_the_real_model_and_price_full_runs_apart() {
    use petnas_core::arch::Architecture;
    use petnas_train::sweep::{describe, plan, Throughput};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let model = root.join("data/models/all-MiniLM-L6-v2");
    assert!(
        model.join("model.safetensors").exists(),
        "{} missing: run data/fetch-model (scripts/test does)",
        model.display()
    );
    let data = std::env::var_os("PETNAS_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("../shared/data/glue"));
    let empty = tempfile::tempdir().unwrap();
    for name in [
        "minilm-demo",
        "minilm-mrpc-search",
        "minilm-lr-search",
        "minilm-table1",
        "minilm-table2",
    ] {
        let mut cfg = SweepConfig::load(&root.join(format!("sweeps/{name}.toml"))).unwrap();
        cfg.model = model.to_string_lossy().into_owned();
        let p = plan(&cfg, Some(&data)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mc = &p.model.config;
        let inv = inventory(mc);
        let size = |spec: &str| {
            Architecture::maximal(&SearchSpace::from_spec(spec, &inv).unwrap(), mc)
                .unwrap()
                .pet_params()
        };
        for r in &p.runs {
            if let (Some(space), Some(budget)) = (&r.spec.space, r.spec.budget) {
                assert!(
                    budget < size(space),
                    "{name}: {} budget {budget} does not prune {space}",
                    r.id
                );
            }
        }
        if name == "minilm-table1" {
            let b: Vec<usize> = p.runs.iter().filter_map(|r| r.spec.budget).collect();
            assert!(
                !b.is_empty() && b.iter().all(|&x| 2 * x == size("mam16")),
                "{name}: budgets {b:?} vs mam16 {}",
                size("mam16")
            );
        }
        // 100 examples/s for PETs, 10 for full fine-tuning, on every task.
        let mut eps = Throughput::new();
        for r in &p.runs {
            eps.insert((r.task.clone(), false), 100.0);
            eps.insert((r.task.clone(), true), 10.0);
        }
        let secs: f64 = p
            .runs
            .iter()
            .map(|r| r.steps as f64 * 16.0 / if r.spec.method.is_full() { 10.0 } else { 100.0 })
            .sum();
        let text = describe(&p, empty.path(), None, Some(&eps), 16);
        let want = if secs < 3600.0 {
            format!("{:.1} min", secs / 60.0)
        } else {
            format!("{:.1} h", secs / 3600.0)
        };
        assert!(
            text.contains(&format!("estimated training time: {want},")),
            "{name}: want {want}\n{text}"
        );
    }
}

/// `max_grad_norm` in a sweep's recipe: a number clips, `"none"` does not, and leaving it out
/// takes the recipe's default, each as the planned run's spec records it.
#[test]
fn max_grad_norm_in_a_sweep_reaches_the_spec() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let model = root.join("data/models/all-MiniLM-L6-v2");
    assert!(
        model.join("config.json").exists(),
        "run data/fetch-model first (scripts/test does)"
    );
    let glue = root.join("../shared/data/glue");
    let tmp = tempfile::tempdir().unwrap();
    let default = petnas_core::record::Recipe::new(1.0, 1.0).max_grad_norm;
    for (line, want) in [
        ("max_grad_norm = 0.5\n", Some(0.5)),
        ("max_grad_norm = \"none\"\n", None),
        ("", default),
    ] {
        let text = format!(
            "model = {:?}\ndata = {:?}\ntasks = [\"rte\"]\nseeds = [0]\n[recipe]\nepochs = 1\n{line}\n[[baselines]]\nmethod = \"bitfit\"\nlr = 1e-3\n",
            model.display().to_string(),
            glue.display().to_string()
        );
        let p = tmp.path().join("c.toml");
        std::fs::write(&p, text).unwrap();
        let cfg = SweepConfig::load(&p).unwrap();
        let plan = petnas_train::sweep::plan(&cfg, None).unwrap();
        assert_eq!(plan.runs[0].spec.recipe.max_grad_norm, want, "{line:?}");
    }
}

/// `budgets_per_task` replaces `budgets` on the tasks it names and on no other; one maximal
/// training per task and seed serves all of that task's budgets; a key that is not one of the
/// sweep's tasks, or an empty list, is refused with the file and the key named.
#[test]
fn budgets_per_task_plans_each_task_at_its_own_budgets() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let model = root.join("data/models/all-MiniLM-L6-v2");
    assert!(
        model.join("config.json").exists(),
        "run data/fetch-model first (scripts/test does)"
    );
    let glue = root.join("../shared/data/glue");
    let tmp = tempfile::tempdir().unwrap();
    let write = |extra: &str| {
        let text = format!(
            "model = {:?}\ndata = {:?}\ntasks = [\"rte\", \"mrpc\"]\nseeds = [0]\n[[searches]]\nspace = \"bitfit\"\nmodes = [\"unstructured\"]\nbudgets = [\"2k\"]\nlr = 1e-3\n{extra}\n",
            model.display().to_string(),
            glue.display().to_string()
        );
        let p = tmp.path().join("c.toml");
        std::fs::write(&p, text).unwrap();
        p
    };
    let p = write("budgets_per_task = { RTE = [\"1k\", 5000] }");
    let cfg = SweepConfig::load(&p).unwrap();
    let plan = petnas_train::sweep::plan(&cfg, None).unwrap();
    let budgets = |task: &str| -> Vec<Option<usize>> {
        plan.runs
            .iter()
            .filter(|r| r.task == task)
            .map(|r| r.spec.budget)
            .collect()
    };
    assert_eq!(budgets("rte"), vec![None, Some(1000), Some(5000)]);
    assert_eq!(budgets("mrpc"), vec![None, Some(2000)]);
    for (extra, want) in [
        (
            "budgets_per_task = { qnli = [\"1k\"] }",
            "budgets_per_task key `qnli` is not one of this sweep's tasks",
        ),
        (
            "budgets_per_task = { rte = [] }",
            "budgets_per_task.rte must not be empty",
        ),
        ("budgets_per_task = { rte = [\"lots\"] }", "lots"),
    ] {
        let p = write(extra);
        let err = SweepConfig::load(&p).unwrap_err().to_string();
        assert!(
            err.contains(want) && err.contains(&p.display().to_string()),
            "{extra}: {err}"
        );
    }
}
