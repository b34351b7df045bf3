//! `petnas-train`: train PET encoders, run the pruning search, check parity with PyTorch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use petnas_core::arch::{Architecture, PruneMode};
use petnas_core::criterion::CriterionKind;
use petnas_core::inventory::inventory;
use petnas_core::prune::{parse_budget, RankGroup};
use petnas_core::record::{LoraInit, Recipe, Reinit, RunRecord, RunSpec};
use petnas_core::space::SearchSpace;
use petnas_train::device::parse_device;
use petnas_train::glue::Task;
use petnas_train::run::{self, DataLimits, RunInputs, RunPlan};
use petnas_train::search::{self, init_map, SearchConfig, SearchHooks};
use petnas_train::sweep;

#[derive(Parser)]
#[command(name = "petnas-train", version, about = "Where and how much to fine-tune: PET architecture search (Lawton et al. 2023) in candle")]
struct Cli {
    /// Worker threads for matrix products and elementwise ops (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Recompute the PyTorch parity fixture and print the differences as JSON (exit 1 beyond tolerance).
    Verify {
        /// Model folder (config.json, model.safetensors, tokenizer.json).
        #[arg(long, default_value = "data/models/all-MiniLM-L6-v2")]
        model: String,
        /// The fixture's .safetensors (its .json must sit beside it).
        #[arg(long)]
        fixture: PathBuf,
        /// cpu or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Train one method (or a saved architecture) and evaluate it on dev.
    Train(TrainArgs),
    /// Train the maximal space once, prune to each budget, re-initialise and retrain.
    Search(SearchArgs),
    /// Run a whole study from a TOML config: resumable, shardable.
    Sweep(SweepArgs),
    /// Export a finished run: a merged HF model folder and/or a PEFT adapter.
    Export {
        /// The run folder (record.json, architecture.json, weights.safetensors).
        #[arg(long)]
        run: PathBuf,
        /// Write a merged model folder here (transformers AutoModelForSequenceClassification).
        #[arg(long)]
        merged: Option<PathBuf>,
        /// Write a PEFT LoRA adapter here.
        #[arg(long)]
        peft: Option<PathBuf>,
        /// Model folder, if it moved since training (default: the record's).
        #[arg(long)]
        model: Option<String>,
    },
    /// Logits of a finished run on its task's dev examples, as JSON lines (text_a, text_b, logits).
    Predict {
        /// The run folder.
        #[arg(long)]
        run: PathBuf,
        /// GLUE folder.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Use the first N dev examples.
        #[arg(long)]
        max_dev: Option<usize>,
        /// Model folder, if it moved since training.
        #[arg(long)]
        model: Option<String>,
    },
    /// Write a tiny random BERT/RoBERTa model folder (2 layers, hidden 32) for tests and demos.
    TinyModel {
        /// bert or roberta.
        #[arg(long, default_value = "bert")]
        family: String,
        /// A tokenizer.json to copy in (its vocabulary size sets the model's).
        #[arg(long)]
        tokenizer: PathBuf,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Seed of the random weights.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Throughput of one PET training step; prints one JSON line.
    Bench {
        /// Model folder.
        #[arg(long, env = "PETNAS_MODEL", default_value = "data/models/all-MiniLM-L6-v2")]
        model: String,
        /// Batch size.
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Sequence length (all tokens real, as the PyTorch reference).
        #[arg(long, default_value_t = 128)]
        seq: usize,
        /// Space: mam (the reference workload), bitfit, mam16, full, or a spec.
        #[arg(long, default_value = "mam")]
        space: String,
        /// Timed steps.
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Untimed warm-up steps.
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// Skip criterion accumulation.
        #[arg(long)]
        no_criterion: bool,
        /// cpu or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
}

#[derive(Args, Clone)]
struct Common {
    /// GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, mnli-mm, qnli, rte.
    #[arg(long)]
    task: String,
    /// Model folder or a hub id present in the local HF cache.
    #[arg(long, env = "PETNAS_MODEL", default_value = "data/models/all-MiniLM-L6-v2")]
    model: String,
    /// GLUE folder (<data>/<TASK>/{train,dev}.tsv). Default: $PETNAS_DATA, data/glue, ../shared/data/glue.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Seed of initialisation, shuffling and dropout.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder: one sub-folder per run.
    #[arg(long, default_value = "runs")]
    out: PathBuf,
    /// Epochs (default: the paper's per-task count).
    #[arg(long)]
    epochs: Option<f64>,
    /// Peak learning rate (default: 2e-5 for full fine-tuning, 1e-3 for PET methods).
    #[arg(long)]
    lr: Option<f64>,
    /// Batch size.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Max sequence length (tokens).
    #[arg(long, default_value_t = 128)]
    max_len: usize,
    /// Warm-up fraction of the linear schedule.
    #[arg(long, default_value_t = 0.06)]
    warmup: f64,
    /// Adam weight decay (0: plain Adam).
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Stop after this many optimizer steps.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Use only the first N training examples.
    #[arg(long)]
    max_train: Option<usize>,
    /// Use only the first N dev examples.
    #[arg(long)]
    max_dev: Option<usize>,
    /// LoRA initialisation: paper (eq. 1), lora (U = 0), paper_zero_offset.
    #[arg(long, default_value = "paper")]
    lora_init: String,
    /// cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Length-bucketing window in batches (1 = plain shuffle).
    #[arg(long, default_value_t = 1)]
    bucket: usize,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    common: Common,
    /// full, bitfit, lora, mam, mam16, a space spec, or arch:FILE (a saved architecture).
    #[arg(long)]
    method: String,
}

#[derive(Args)]
struct SearchArgs {
    #[command(flatten)]
    common: Common,
    /// Maximal space: bitfit, mam16, ... or a space spec.
    #[arg(long)]
    space: String,
    /// structured, unstructured, or both.
    #[arg(long, default_value = "both")]
    mode: String,
    /// Budgets in PET parameters, comma separated (2000,10k,3.4M).
    #[arg(long, value_delimiter = ',', required = true, allow_hyphen_values = true)]
    budget: Vec<String>,
    /// Criterion: mean (the paper's), last, abs, magnitude, random.
    #[arg(long, default_value = "mean")]
    criterion: String,
    /// Pruned training starts from: same (the paper's), fresh, keep.
    #[arg(long, default_value = "same")]
    reinit: String,
    /// Rank-component score: uv (column k of U and of V) or u_only.
    #[arg(long, default_value = "uv")]
    rank_group: String,
    /// Peak LR of the maximal (search) training, if it should differ from --lr.
    #[arg(long)]
    search_lr: Option<f64>,
}

fn parse_enum<T: serde::de::DeserializeOwned>(what: &str, s: &str, valid: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| anyhow::anyhow!("--{what} `{s}`: expected one of {valid}"))
}

fn recipe(c: &Common, task: Task, default_lr: f64) -> Recipe {
    Recipe {
        epochs: c.epochs.unwrap_or_else(|| task.default_epochs()),
        lr: c.lr.unwrap_or(default_lr),
        batch_size: c.batch_size,
        max_len: c.max_len,
        warmup_frac: c.warmup,
        weight_decay: c.weight_decay,
        max_steps: c.max_steps,
        max_train: c.max_train,
        max_dev: c.max_dev,
    }
}

fn load_inputs(c: &Common, task: Task) -> Result<RunInputs> {
    let data = sweep::find_data(c.data.as_deref())?;
    let device = parse_device(&c.device)?;
    let limits = DataLimits { max_train: c.max_train, max_dev: c.max_dev };
    Ok(RunInputs::load(&c.model, &data, task, c.max_len, limits, &device)?)
}

fn cmd_train(a: TrainArgs) -> Result<()> {
    let c = &a.common;
    let task: Task = c.task.parse().map_err(|e| anyhow::anyhow!("--task: {e}"))?;
    let lora_init: LoraInit = parse_enum("lora-init", &c.lora_init, "paper, lora, paper_zero_offset")?;
    let inp = load_inputs(c, task)?;
    let cfg = &inp.model.config;
    let (arch, method, space_name) = if a.method == "full" {
        (None, "full".to_string(), None)
    } else if let Some(file) = a.method.strip_prefix("arch:") {
        let arch = Architecture::load(Path::new(file)).with_context(|| format!("--method arch:{file}"))?;
        arch.check_model(cfg).with_context(|| format!("--method arch:{file}"))?;
        let name = arch.space.clone();
        (Some(arch), a.method.clone(), Some(name))
    } else {
        let space = SearchSpace::from_spec(&a.method, &inventory(cfg)).with_context(|| format!("--method {}", a.method))?;
        let name = space.name.clone();
        (Some(Architecture::maximal(&space, cfg)?), a.method.clone(), Some(name))
    };
    let default_lr = if method == "full" { 2e-5 } else { 1e-3 };
    let spec = RunSpec {
        task: task.name().to_string(),
        model: c.model.clone(),
        model_fingerprint: petnas_core::arch::ModelFingerprint::from_config(cfg)?,
        method: method.clone(),
        space: space_name,
        mode: arch.as_ref().and_then(|a| a.mode),
        budget: arch.as_ref().and_then(|a| a.budget),
        seed: c.seed,
        recipe: recipe(c, task, default_lr),
        criterion: None,
        reinit: None,
        lora_init,
        device: c.device.clone(),
    };
    let start = arch.as_ref().map(|a| init_map(a, c.seed, lora_init)).unwrap_or_default();
    let safe_method = method.replace(['/', ':', '.'], "_");
    let id = format!("{}-{}-s{}", task.name(), safe_method, c.seed);
    let o = run::execute(
        &inp,
        RunPlan { spec, arch: arch.as_ref(), start: &start, criterion: None, bucket: c.bucket, progress: progress(c.quiet) },
        &id,
        &c.out,
    )?;
    println!("{}", run::summary_line(&o.record));
    println!("wrote {}", c.out.join(&id).display());
    if let petnas_core::record::RunStatus::Failed { reason } = &o.record.result.status {
        bail!("run {id} failed: {reason}");
    }
    Ok(())
}

fn cmd_search(a: SearchArgs) -> Result<()> {
    let c = &a.common;
    let task: Task = c.task.parse().map_err(|e| anyhow::anyhow!("--task: {e}"))?;
    let modes = match a.mode.as_str() {
        "both" => vec![PruneMode::Structured, PruneMode::Unstructured],
        m => vec![parse_enum::<PruneMode>("mode", m, "structured, unstructured, both")?],
    };
    let budgets = a.budget.iter().map(|b| parse_budget(b)).collect::<std::result::Result<Vec<_>, _>>().context("--budget")?;
    let criterion: CriterionKind = parse_enum("criterion", &a.criterion, "mean, last, abs, magnitude, random")?;
    let reinit: Reinit = parse_enum("reinit", &a.reinit, "same, fresh, keep")?;
    let rank_group: RankGroup = parse_enum("rank-group", &a.rank_group, "uv, u_only")?;
    let lora_init: LoraInit = parse_enum("lora-init", &c.lora_init, "paper, lora, paper_zero_offset")?;
    let inp = load_inputs(c, task)?;
    let space = SearchSpace::from_spec(&a.space, &inventory(&inp.model.config)).with_context(|| format!("--space {}", a.space))?;
    if space.full_finetune {
        bail!("--space {}: full fine-tuning has no PET parameters to search over", a.space);
    }
    let r = recipe(c, task, 1e-3);
    let search_recipe = a.search_lr.map(|lr| Recipe { lr, ..r.clone() });
    let cfg = SearchConfig {
        task: task.name().to_string(),
        model: c.model.clone(),
        space,
        tag: String::new(),
        modes,
        budgets,
        seed: c.seed,
        recipe: r,
        search_recipe,
        criteria: vec![criterion],
        reinits: vec![reinit],
        lora_init,
        rank_group,
        device: c.device.clone(),
    };
    let never = |_: &str, _: &RunSpec| false;
    let mut print = |r: &RunRecord| println!("{}", run::summary_line(r));
    search::search(&inp, &cfg, &c.out, SearchHooks { is_done: &never, on_record: &mut print, progress: progress(c.quiet), bucket: c.bucket })?;
    println!("wrote {}", c.out.display());
    Ok(())
}

fn progress(quiet: bool) -> Option<indicatif::MultiProgress> {
    (!quiet).then(indicatif::MultiProgress::new)
}

#[derive(Args)]
struct SweepArgs {
    /// The sweep config (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Output folder (default: runs/<config file stem>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// GLUE folder, overriding the config's.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Print the plan and touch nothing.
    #[arg(long)]
    dry_run: bool,
    /// Run shard K of N (0-based), e.g. 0/4, for job arrays.
    #[arg(long)]
    shard: Option<sweep::Shard>,
    /// Redo finished runs whose config changed (default: stop with an error).
    #[arg(long)]
    rerun_changed: bool,
    /// Skip the throughput measurement behind the cost estimate.
    #[arg(long)]
    no_estimate: bool,
    /// Rebuild index.jsonl from every run folder (after gathering shards) and exit.
    #[arg(long)]
    reindex: bool,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

/// Throughput behind the plan's cost estimate, per (task, full fine-tuning or not): the median
/// examples/s of finished runs of that kind in `out`, else a short `bench` on the task's mean
/// training length (full fine-tuning runs several times slower than a PET: it is measured apart).
fn measured_throughput(plan: &sweep::Plan, cfg: &sweep::SweepConfig, out: &Path, device: &candle_core::Device) -> Result<sweep::Throughput> {
    let mut seen: BTreeMap<(String, bool), Vec<f64>> = BTreeMap::new();
    for r in &plan.runs {
        if let Ok(rec) = RunRecord::load(&sweep::runs_dir(out).join(&r.id).join("record.json")) {
            if rec.result.examples_per_second > 0.0 {
                seen.entry((r.task.clone(), sweep::is_full(&r.spec))).or_default().push(rec.result.examples_per_second);
            }
        }
    }
    let mut eps = sweep::Throughput::new();
    let mut mean_len: BTreeMap<String, usize> = BTreeMap::new();
    for r in &plan.runs {
        let key = (r.task.clone(), sweep::is_full(&r.spec));
        if eps.contains_key(&key) {
            continue;
        }
        if let Some(v) = seen.get_mut(&key) {
            v.sort_by(|a, b| a.total_cmp(b));
            eps.insert(key, v[v.len() / 2]);
            continue;
        }
        let len = match mean_len.get(&r.task) {
            Some(l) => *l,
            None => {
                let task: Task = r.task.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
                let limits = DataLimits { max_train: Some(256), max_dev: Some(1) };
                let inp = RunInputs::load(&cfg.model, &plan.data, task, cfg.recipe.max_len.unwrap_or(128), limits, device)?;
                let l = inp.train.encoded.iter().map(|e| e.ids.len()).sum::<usize>() / inp.train.encoded.len().max(1);
                mean_len.insert(r.task.clone(), l);
                l
            }
        };
        let bc = petnas_train::bench::BenchConfig {
            model: cfg.model.clone(),
            batch: cfg.recipe.batch_size.unwrap_or(16),
            seq: len.max(8),
            space: if key.1 { "full".into() } else { "mam".into() },
            steps: 2,
            warmup: 1,
            criterion: !key.1,
        };
        eps.insert(key, petnas_train::bench::bench(&bc, device)?.examples_per_s);
    }
    Ok(eps)
}

fn cmd_sweep(a: SweepArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.config).with_context(|| format!("reading {}", a.config.display()))?;
    let cfg = sweep::SweepConfig::load(&a.config)?;
    let out = a.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(a.config.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "sweep".into()))
    });
    let plan = sweep::plan(&cfg, a.data.as_deref())?;
    if a.reindex {
        let n = sweep::write_index(&out, None, None)?;
        println!("wrote {} ({n} runs)", out.join("index.jsonl").display());
        return Ok(());
    }
    let device = parse_device(&cfg.device)?;
    let batch = cfg.recipe.batch_size.unwrap_or(16);
    let eps = if a.no_estimate { None } else { Some(measured_throughput(&plan, &cfg, &out, &device)?) };
    println!("{}", sweep::describe(&plan, &out, a.shard, eps.as_ref(), batch).trim_end());
    if a.dry_run {
        for r in plan.runs.iter().filter(|r| a.shard.is_none_or(|s| s.owns(r.job))) {
            println!("  {} ({} steps) [{:?}]", r.id, r.steps, sweep::run_state(&out, &r.id, &r.hash));
        }
        return Ok(());
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let log_path = out.join("sweep.log");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).with_context(|| format!("opening {}", log_path.display()))?;
    let _ = tracing_subscriber::fmt().with_writer(std::sync::Mutex::new(log)).with_ansi(false).try_init();
    tracing::info!(config = %a.config.display(), out = %out.display(), shard = ?a.shard, "sweep start");
    let opts = sweep::SweepOptions { out: out.clone(), shard: a.shard, rerun_changed: a.rerun_changed, progress: !a.quiet };
    let s = sweep::execute(&cfg, &text, &plan, &opts, &device)?;
    tracing::info!(?s, "sweep end");
    println!(
        "sweep done: {} planned, {} already done, {} completed now, {} failed; index: {}",
        s.planned,
        s.skipped,
        s.completed,
        s.failed,
        out.join(match a.shard {
            Some(sh) => format!("index.{}-of-{}.jsonl", sh.k, sh.n),
            None => "index.jsonl".into(),
        })
        .display()
    );
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        // Read by gemm and rayon when their pools start, so before any tensor work.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    // Before any tensor work: malloc thresholds, and candle's elementwise pool off (it spins
    // against rayon for the same cores; see model/cpu.rs).
    petnas_train::model::cpu::tune_for_training();
    match cli.cmd {
        Cmd::Verify { model, fixture, device } => {
            let dev = parse_device(&device)?;
            let rep = petnas_train::verify::verify(&model, &fixture, &dev)?;
            println!("{}", serde_json::to_string(&rep)?);
            if !rep.pass {
                bail!("parity check failed (tolerances: hidden {} abs, loss/logits {} rel, gradients/criterion {} rel)",
                    petnas_train::verify::HIDDEN_ABS, petnas_train::verify::OUTPUT_REL, petnas_train::verify::GRAD_REL);
            }
            Ok(())
        }
        Cmd::Train(a) => cmd_train(a),
        Cmd::Sweep(a) => cmd_sweep(a),
        Cmd::Predict { run, data, max_dev, model } => {
            let loaded = petnas_train::export::load_run(&run, model.as_deref(), &candle_core::Device::Cpu)
                .with_context(|| format!("loading run {}", run.display()))?;
            let data = sweep::find_data(data.as_deref())?;
            for p in petnas_train::export::predict_dev(&loaded, &data, max_dev)? {
                println!("{}", serde_json::to_string(&p)?);
            }
            Ok(())
        }
        Cmd::Export { run, merged, peft, model } => {
            if merged.is_none() && peft.is_none() {
                bail!("export: give --merged DIR and/or --peft DIR");
            }
            let loaded = petnas_train::export::load_run(&run, model.as_deref(), &candle_core::Device::Cpu)
                .with_context(|| format!("loading run {}", run.display()))?;
            if let Some(m) = merged {
                let p = petnas_train::export::export_merged(&loaded, &m)?;
                println!("wrote merged model {}", p.display());
            }
            if let Some(p) = peft {
                let p = petnas_train::export::export_peft(&loaded, &p)?;
                println!("wrote PEFT adapter {}", p.display());
            }
            Ok(())
        }
        Cmd::TinyModel { family, tokenizer, out, seed } => {
            let family = match family.as_str() {
                "bert" => petnas_core::inventory::Family::Bert,
                "roberta" => petnas_core::inventory::Family::Roberta,
                f => bail!("--family {f}: expected bert or roberta"),
            };
            petnas_train::model::load::write_tiny_model(family, &tokenizer, &out, seed)?;
            println!("wrote {}", out.display());
            Ok(())
        }
        Cmd::Bench { model, batch, seq, space, steps, warmup, no_criterion, device } => {
            let dev = parse_device(&device)?;
            let cfg = petnas_train::bench::BenchConfig { model, batch, seq, space, steps, warmup, criterion: !no_criterion };
            let rep = petnas_train::bench::bench(&cfg, &dev)?;
            println!("{}", serde_json::to_string(&rep)?);
            Ok(())
        }
        Cmd::Search(a) => cmd_search(a),
    }
}
