//! `petnas-train`: train PET encoders, run the pruning search, check parity with PyTorch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use petnas_core::arch::Architecture;
use petnas_core::inventory::inventory;
use petnas_core::record::Method;
use petnas_core::record::{LoraInit, Precision, Recipe, RunRecord, RunSpec};
use petnas_core::space::SearchSpace;
use petnas_train::device::parse_device;
use petnas_train::glue::{self, Task};
use petnas_train::model::pet::init_map;
use petnas_train::options::{RecipeOptions, RunBase, SearchOptions};
use petnas_train::run::{self, DataLimits, RunInputs, RunPlan};
use petnas_train::search::{self, SearchHooks};
use petnas_train::sweep;
use petnas_train::task::{TaskInfo, UserTask};

#[derive(Parser)]
#[command(
    name = "petnas-train",
    version,
    about = "Where and how much to fine-tune: PET architecture search (Lawton et al. 2023) in candle"
)]
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
        /// fp32, or bf16 (checked against bf16 tolerances: twice PyTorch autocast's deviation).
        #[arg(long, default_value = "fp32")]
        precision: Precision,
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
    /// Logits of a finished run on its task's dev (or test) examples, as JSON lines (text_a,
    /// text_b, logits; for a user task with class labels also the predicted label).
    Predict {
        /// The run folder.
        #[arg(long)]
        run: PathBuf,
        /// GLUE folder (default: the one the run was trained on).
        #[arg(long)]
        data: Option<PathBuf>,
        /// dev, or test (a user task with a test file).
        #[arg(long, default_value = "dev")]
        split: String,
        /// Use the first N examples.
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
        #[arg(
            long,
            env = "PETNAS_MODEL",
            default_value = "data/models/all-MiniLM-L6-v2"
        )]
        model: String,
        /// Batch size.
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Sequence length (all tokens real, as the PyTorch reference); with --padded, the
        /// truncation length.
        #[arg(long, default_value_t = 128)]
        seq: usize,
        /// Real batches of this task's training split at their real, padded lengths (as `train`
        /// feeds them without --bucket) instead of random full-length tokens.
        #[arg(long)]
        padded: Option<String>,
        /// GLUE folder for --padded (default: as `train`).
        #[arg(long)]
        data: Option<PathBuf>,
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
        /// Arithmetic of the frozen matmuls: fp32 or bf16.
        #[arg(long, default_value = "fp32")]
        precision: Precision,
    },
}

#[derive(Args, Clone)]
struct Common {
    /// GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, mnli-mm, qnli, rte (or your own task: --train, --dev, ...).
    #[arg(long, required_unless_present = "train", conflicts_with = "train")]
    task: Option<String>,
    #[command(flatten)]
    user_task: UserTaskArgs,
    /// Model folder or a hub id present in the local HF cache.
    #[arg(
        long,
        env = "PETNAS_MODEL",
        default_value = "data/models/all-MiniLM-L6-v2"
    )]
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
    #[command(flatten)]
    recipe: RecipeOptions,
    /// LoRA initialisation: paper (eq. 1: U, V both Gaussian), hu (Hu et al./PEFT: V = 0),
    /// u_zero (U = 0), paper_zero_offset (eq. 1 minus the initial product).
    #[arg(long, default_value = "paper")]
    lora_init: LoraInit,
    /// Arithmetic of the frozen matmuls: fp32, or bf16 (mixed precision; trained tensors stay fp32).
    #[arg(long, default_value = "fp32")]
    precision: Precision,
    /// cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Replace an existing run folder made with another config (default: refuse).
    #[arg(long)]
    overwrite: bool,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
    /// Runs to train at once on the CPU, each on `--threads`/N compute threads (default 1). On a
    /// small CPU two single-threaded runs get more done than one run on two threads; results are
    /// the same bits either way.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
}

/// Your own task, from files: `--train FILE --dev FILE --text-columns A[,B] --label-column L`.
#[derive(Args, Clone)]
struct UserTaskArgs {
    /// Your own task's training file: .csv, .tsv, .jsonl (.ndjson, .json: JSON Lines) or .parquet.
    #[arg(long, requires_all = ["dev", "text_columns", "label_column"], help_heading = "Your own task")]
    train: Option<PathBuf>,
    /// Its dev file (scored at the end of training).
    #[arg(long, requires = "train", help_heading = "Your own task")]
    dev: Option<PathBuf>,
    /// Its test file (for `predict --split test`).
    #[arg(long, requires = "train", help_heading = "Your own task")]
    test: Option<PathBuf>,
    /// One text column, or two for sentence pairs (comma separated).
    #[arg(
        long,
        value_delimiter = ',',
        requires = "train",
        help_heading = "Your own task"
    )]
    text_columns: Vec<String>,
    /// The label column.
    #[arg(long, requires = "train", help_heading = "Your own task")]
    label_column: Option<String>,
    /// classification or regression [default: regression if every training label is a number and one is fractional].
    #[arg(long, requires = "train", help_heading = "Your own task")]
    task_kind: Option<petnas_core::task::TaskKind>,
    /// Metrics, the primary first: accuracy, f1, macro_f1, mcc, pearson, spearman [default: accuracy,f1 for 2 classes, accuracy,macro_f1 for more, pearson,spearman for regression].
    #[arg(
        long = "metric",
        value_delimiter = ',',
        requires = "train",
        help_heading = "Your own task"
    )]
    metrics: Vec<petnas_core::task::Metric>,
    /// Class labels in id order [default: the training file's, sorted; numerically if all are integers].
    #[arg(
        long,
        value_delimiter = ',',
        requires = "train",
        help_heading = "Your own task"
    )]
    labels: Vec<String>,
    /// The task's name in run ids and tables [default: the training file's folder name].
    #[arg(long, requires = "train", help_heading = "Your own task")]
    task_name: Option<String>,
}

/// The task of `train`/`search`: a GLUE task in the data folder, or the user's files.
fn task_info(c: &Common) -> Result<TaskInfo> {
    let u = &c.user_task;
    match (&c.task, &u.train) {
        (_, Some(train)) => {
            let ut = UserTask {
                name: u.task_name.clone(),
                train: train.clone(),
                dev: u.dev.clone().context("--dev is required with --train")?,
                test: u.test.clone(),
                text_columns: u.text_columns.clone(),
                label_column: u.label_column.clone().context("--label-column is required with --train")?,
                kind: u.task_kind,
                metrics: u.metrics.clone(),
                labels: u.labels.clone(),
                epochs: None,
            };
            Ok(TaskInfo::user(&ut)?)
        }
        (Some(t), None) => {
            let task: Task = t.parse().map_err(|e| anyhow::anyhow!("--task: {e}"))?;
            let data = glue::find_data(c.data.as_deref())?;
            Ok(TaskInfo::glue(task, &data)?)
        }
        (None, None) => bail!("give --task NAME (GLUE) or --train FILE --dev FILE --text-columns A[,B] --label-column L"),
    }
}

/// The recipe of a run on `task` from the command line, checked; a bad value is named as the
/// option is spelled (`--warmup 1: ...`).
fn recipe(c: &Common, task: &TaskInfo, default_lr: f64) -> Result<Recipe> {
    let r = c.recipe.resolve(task, default_lr);
    r.validate().map_err(cli_recipe_error)?;
    Ok(r)
}

/// "warmup_frac = 1: ..." → "--warmup 1: ...", as the option is spelled.
fn cli_recipe_error(e: String) -> anyhow::Error {
    let (field, rest) = e.split_once(" = ").unwrap_or((e.as_str(), ""));
    let flag = if field == "warmup_frac" {
        "warmup".to_string()
    } else {
        field.replace('_', "-")
    };
    anyhow::anyhow!("--{flag} {rest}")
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
    #[command(flatten)]
    search: SearchOptions,
}

fn load_inputs(c: &Common, task: &TaskInfo, r: &Recipe) -> Result<RunInputs> {
    let device = parse_device(&c.device)?;
    let limits = DataLimits {
        max_train: r.max_train,
        max_dev: r.max_dev,
    };
    eprintln!("task {}", task.describe());
    Ok(RunInputs::load(&c.model, task, r.max_len, limits, &device)?)
}

/// Refuses to replace a finished run made with another config (unless `--overwrite`); says
/// whether the run is already done with this very config.
fn check_existing(out: &Path, id: &str, spec: &RunSpec, overwrite: bool) -> Result<bool> {
    let dir = out.join(id);
    match sweep::run_state_in(out, id, &spec.hash()) {
        sweep::RunState::Done => Ok(true),
        sweep::RunState::Changed if !overwrite => {
            let old = RunRecord::load(&dir.join("record.json"))?;
            bail!(
                "{} holds a run made with another config ({}); pass another --out, or --overwrite to replace it",
                dir.display(),
                spec_difference(&old.spec, spec)
            )
        }
        _ => Ok(false),
    }
}

/// The fields in which two specs differ, as `recipe.lr: 0.003 → 0.001`.
fn spec_difference(old: &RunSpec, new: &RunSpec) -> String {
    fn walk(a: &serde_json::Value, b: &serde_json::Value, path: &str, out: &mut Vec<String>) {
        match (a, b) {
            (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(
                        x.get(k).unwrap_or(&serde_json::Value::Null),
                        y.get(k).unwrap_or(&serde_json::Value::Null),
                        &p,
                        out,
                    );
                }
            }
            _ if a != b => out.push(format!("{path}: {a} → {b}")),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(
        &serde_json::to_value(old).unwrap_or_default(),
        &serde_json::to_value(new).unwrap_or_default(),
        "",
        &mut out,
    );
    if out.is_empty() {
        "same settings, another version of the spec".into()
    } else {
        out.join(", ")
    }
}

/// The one-line notice of `--precision bf16` on a CPU without AMX tiles.
fn precision_notice(p: Precision) {
    if p == Precision::Bf16 {
        if let Some(n) = petnas_train::model::fused::bf16_notice() {
            eprintln!("{n}");
        }
    }
}

fn cmd_train(a: TrainArgs) -> Result<()> {
    let c = &a.common;
    precision_notice(c.precision);
    let task = task_info(c)?;
    let method = Method::parse(&a.method);
    let default_lr = if method.is_full() { 2e-5 } else { 1e-3 };
    let recipe = recipe(c, &task, default_lr)?;
    let inp = load_inputs(c, &task, &recipe)?;
    let cfg = &inp.model.config;
    let arch = match &method {
        Method::Full => None,
        Method::Arch(file) => {
            let arch = Architecture::load(Path::new(file))
                .with_context(|| format!("--method arch:{file}"))?;
            arch.check_model(cfg)
                .with_context(|| format!("--method arch:{file}"))?;
            Some(arch)
        }
        Method::Space(spec) => {
            let space = SearchSpace::from_spec(spec, &inventory(cfg))
                .with_context(|| format!("--method {spec}"))?;
            Some(Architecture::maximal(&space, cfg)?)
        }
        Method::Search => anyhow::bail!(
            "--method search: a search is `petnas-train search`; `train` trains a fixed method \
             (full, bitfit, lora, mam, mam16, a space spec, or arch:<file>)"
        ),
    };
    let base = RunBase::new(&task, &c.model, cfg, c.seed, &c.device, c.precision)?;
    let spec = base.baseline_spec(method.clone(), arch.as_ref(), recipe, c.lora_init);
    let start = arch
        .as_ref()
        .map(|a| init_map(a, c.seed, c.lora_init))
        .unwrap_or_default();
    let id = sweep::baseline_id(task.name(), &method.as_string(), None, c.seed);
    if check_existing(&c.out, &id, &spec, c.overwrite)? {
        println!(
            "{} is already done with this config (a run folder with the same spec hash)",
            c.out.join(&id).display()
        );
        return Ok(());
    }
    let o = run::execute(
        &inp,
        RunPlan {
            spec,
            arch: arch.as_ref(),
            start: &start,
            criterion: None,
            progress: progress(c.quiet),
        },
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
    precision_notice(c.precision);
    let task = task_info(c)?;
    let r = recipe(c, &task, 1e-3)?;
    let inp = load_inputs(c, &task, &r)?;
    let base = RunBase::new(
        &task,
        &c.model,
        &inp.model.config,
        c.seed,
        &c.device,
        c.precision,
    )?;
    let opts = SearchOptions {
        lr: r.lr,
        lora_init: c.lora_init,
        ..a.search.clone()
    };
    let (cfg, maximal) = opts.resolve(&base, &inp.model.config, r)?;
    // Refuse before training anything if a run folder of this search holds another config.
    check_existing(
        &c.out,
        &cfg.maximal_id(),
        &cfg.maximal_spec(&maximal),
        c.overwrite,
    )?;
    for p in cfg.pruned_runs(&maximal) {
        check_existing(&c.out, &p.id, &p.spec, c.overwrite)?;
    }
    let out = c.out.clone();
    let done = move |id: &str, spec: &RunSpec| {
        sweep::run_state_in(&out, id, &spec.hash()) == sweep::RunState::Done
    };
    let mut print = |r: &RunRecord| println!("{}", run::summary_line(r));
    let made = search::search(
        &inp,
        &cfg,
        &c.out,
        SearchHooks {
            is_done: &done,
            on_record: &mut print,
            progress: progress(c.quiet),
        },
    )?;
    if made.is_empty() {
        println!(
            "every run of this search is already done with this config in {}",
            c.out.display()
        );
    }
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
    /// Print the plan (each run with its state and spec hash, the `config_hash` its record will
    /// carry) and touch nothing.
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
    /// Runs to train at once on the CPU, each on `--threads`/N compute threads (default 1). On a
    /// small CPU two single-threaded runs get more done than one run on two threads; results are
    /// the same bits either way.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
}

/// Throughput behind the plan's cost estimate, per (task, full fine-tuning or not): the median
/// examples/s of finished runs of that kind in `out`, else a short `bench` on the task's mean
/// training length (full fine-tuning runs several times slower than a PET: it is measured apart).
fn measured_throughput(
    plan: &sweep::Plan,
    cfg: &sweep::SweepConfig,
    out: &Path,
    device: &candle_core::Device,
) -> Result<sweep::Throughput> {
    let mut seen: BTreeMap<(String, bool), Vec<f64>> = BTreeMap::new();
    for r in &plan.runs {
        if let Ok(rec) = RunRecord::load(&sweep::runs_dir(out).join(&r.id).join("record.json")) {
            if rec.result.examples_per_second > 0.0 {
                seen.entry((r.task.clone(), sweep::is_full(&r.spec)))
                    .or_default()
                    .push(rec.result.examples_per_second);
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
                let task = plan
                    .task(&r.task)
                    .with_context(|| format!("task {} is not in the plan", r.task))?;
                let limits = DataLimits {
                    max_train: Some(256),
                    max_dev: Some(1),
                };
                let inp = RunInputs::load(&cfg.model, task, cfg.max_len(), limits, device)?;
                let l = inp.train.encoded.iter().map(|e| e.ids.len()).sum::<usize>()
                    / inp.train.encoded.len().max(1);
                mean_len.insert(r.task.clone(), l);
                l
            }
        };
        let bc = petnas_train::bench::BenchConfig {
            model: cfg.model.clone(),
            batch: cfg.batch_size(),
            seq: len.max(8),
            space: if key.1 { "full".into() } else { "mam".into() },
            steps: 2,
            warmup: 1,
            criterion: !key.1,
            padded: None,
            precision: cfg.precision,
        };
        eps.insert(key, petnas_train::bench::bench(&bc, device)?.examples_per_s);
    }
    Ok(eps)
}

fn cmd_sweep(a: SweepArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.config)
        .with_context(|| format!("reading {}", a.config.display()))?;
    let cfg = sweep::SweepConfig::load(&a.config)?;
    let out = a.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(
            a.config
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "sweep".into()),
        )
    });
    let plan =
        sweep::plan(&cfg, a.data.as_deref()).with_context(|| format!("{}", a.config.display()))?;
    precision_notice(cfg.precision);
    if a.reindex {
        let n = sweep::write_index(&out, None, None)?;
        println!("wrote {} ({n} runs)", out.join("index.jsonl").display());
        return Ok(());
    }
    let device = parse_device(&cfg.device)?;
    let threads = rayon::current_num_threads();
    if a.jobs == 0 || a.jobs > threads {
        anyhow::bail!(
            "--jobs {}: expected 1 to {threads} (the compute threads, --threads)",
            a.jobs
        );
    }
    if a.jobs > 1 && !device.is_cpu() {
        anyhow::bail!(
            "--jobs {}: runs share one device only on the CPU; on {} run one sweep per device (--shard K/N)",
            a.jobs,
            cfg.device
        );
    }
    let batch = cfg.batch_size();
    let eps = if a.no_estimate {
        None
    } else {
        Some(measured_throughput(&plan, &cfg, &out, &device)?)
    };
    // A reader that stops early (`--dry-run | head`) closes the pipe: stop printing, not panic.
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if writeln!(
        stdout,
        "{}",
        sweep::describe(&plan, &out, a.shard, eps.as_ref(), batch).trim_end()
    )
    .is_err()
    {
        return Ok(());
    }
    if a.jobs > 1 && eps.is_some() {
        let _ = writeln!(
            stdout,
            "  --jobs {}: {} runs at once on {} thread(s) each; the estimate is for one run at a time at the rates above",
            a.jobs,
            a.jobs,
            threads / a.jobs
        );
    }
    if a.dry_run {
        for r in plan
            .runs
            .iter()
            .filter(|r| a.shard.is_none_or(|s| s.owns(r.job)))
        {
            if writeln!(
                stdout,
                "  {} ({} steps) [{:?}] spec {}",
                r.id,
                r.steps,
                plan.state(&out, &r.id, &r.hash),
                r.hash
            )
            .is_err()
            {
                return Ok(());
            }
        }
        return Ok(());
    }
    drop(stdout);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let log_path = out.join("sweep.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let _ = tracing_subscriber::fmt()
        .with_writer(std::sync::Mutex::new(log))
        .with_ansi(false)
        .try_init();
    tracing::info!(config = %a.config.display(), out = %out.display(), shard = ?a.shard, "sweep start");
    let opts = sweep::SweepOptions {
        out: out.clone(),
        shard: a.shard,
        rerun_changed: a.rerun_changed,
        progress: !a.quiet,
        jobs: a.jobs,
        threads_per_job: threads / a.jobs,
    };
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
    // Before any other thread or tensor work: thread pools that flush denormals, candle's
    // elementwise pool off, malloc thresholds (see model/cpu.rs).
    petnas_train::model::cpu::init_process(cli.threads).map_err(anyhow::Error::msg)?;
    match cli.cmd {
        Cmd::Verify {
            model,
            fixture,
            device,
            precision,
        } => {
            let dev = parse_device(&device)?;
            let rep = petnas_train::verify::verify(&model, &fixture, &dev, precision)?;
            println!("{}", serde_json::to_string(&rep)?);
            if !rep.pass {
                let t = rep.tolerances;
                bail!("parity check failed (tolerances: hidden {} abs, logits {} rel, loss {} rel, gradients/criterion {} rel)",
                    t.hidden_abs, t.logits_rel, t.loss_rel, t.grad_rel);
            }
            Ok(())
        }
        Cmd::Train(a) => cmd_train(a),
        Cmd::Sweep(a) => cmd_sweep(a),
        Cmd::Predict {
            run,
            data,
            split,
            max_dev,
            model,
        } => {
            let split = match split.as_str() {
                "dev" => petnas_train::task::SplitName::Dev,
                "test" => petnas_train::task::SplitName::Test,
                s => bail!("--split {s}: expected dev or test"),
            };
            let loaded =
                petnas_train::export::load_run(&run, model.as_deref(), &candle_core::Device::Cpu)
                    .with_context(|| format!("loading run {}", run.display()))?;
            // The data the run was trained on, unless told otherwise.
            let data = match data {
                Some(d) => Some(glue::find_data(Some(&d))?),
                None => None,
            };
            let task = loaded.task_info(&run, data.as_deref())?;
            for p in petnas_train::export::predict(&loaded, &task, split, max_dev)? {
                println!("{}", serde_json::to_string(&p)?);
            }
            Ok(())
        }
        Cmd::Export {
            run,
            merged,
            peft,
            model,
        } => {
            if merged.is_none() && peft.is_none() {
                bail!("export: give --merged DIR and/or --peft DIR");
            }
            let loaded =
                petnas_train::export::load_run(&run, model.as_deref(), &candle_core::Device::Cpu)
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
        Cmd::TinyModel {
            family,
            tokenizer,
            out,
            seed,
        } => {
            let family = match family.as_str() {
                "bert" => petnas_core::inventory::Family::Bert,
                "roberta" => petnas_core::inventory::Family::Roberta,
                f => bail!("--family {f}: expected bert or roberta"),
            };
            petnas_train::model::load::write_tiny_model(family, &tokenizer, &out, seed)?;
            println!("wrote {}", out.display());
            Ok(())
        }
        Cmd::Bench {
            model,
            batch,
            seq,
            padded,
            data,
            space,
            steps,
            warmup,
            no_criterion,
            device,
            precision,
        } => {
            let dev = parse_device(&device)?;
            let padded = match padded {
                Some(t) => Some(petnas_train::bench::PaddedData {
                    task: t.parse().map_err(|e| anyhow::anyhow!("--padded: {e}"))?,
                    data: glue::find_data(data.as_deref())?,
                }),
                None => None,
            };
            precision_notice(precision);
            let cfg = petnas_train::bench::BenchConfig {
                model,
                batch,
                seq,
                space,
                steps,
                warmup,
                criterion: !no_criterion,
                padded,
                precision,
            };
            let rep = petnas_train::bench::bench(&cfg, &dev)?;
            println!("{}", serde_json::to_string(&rep)?);
            Ok(())
        }
        Cmd::Search(a) => cmd_search(a),
    }
}
