//! From a config to the planned runs (each with its spec and hash), the data folder, shards.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use petnas_core::arch::Architecture;
use petnas_core::inventory::inventory;
use petnas_core::record::{Method, RunSpec};
use petnas_core::space::SearchSpace;
use serde::Serialize;

use crate::error::{Result, TrainError};
use crate::glue::Task;
use crate::model::load::ModelDir;
use crate::options::RunBase;
use crate::search::SearchConfig;
use crate::task::{SplitName, TaskInfo};

use super::*;

/// A unit of scheduling: one baseline run, or one search (maximal + its pruned runs). Shards
/// split the plan by job, so a search's runs stay together.
#[derive(Debug, Clone)]
pub enum Job {
    /// One training of a fixed method.
    Baseline {
        /// Task.
        task: TaskInfo,
        /// Run id.
        id: String,
        /// Spec.
        spec: RunSpec,
        /// Architecture (None: full fine-tuning).
        arch: Option<Architecture>,
    },
    /// One search: one maximal training and its pruned runs.
    Search {
        /// Task.
        task: TaskInfo,
        /// The search that owns the maximal training.
        cfg: Box<SearchConfig>,
        /// Later entries of the config whose maximal training is the same training (the same
        /// spec hash: e.g. a tagged entry that only asks for other re-initialisations or
        /// pruning rounds). They add pruned runs and train no maximal run of their own.
        also: Vec<SearchConfig>,
    },
}

/// A planned run, for the plan display, resume and cost.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedRun {
    /// Run id.
    pub id: String,
    /// Task.
    pub task: String,
    /// Index of its job.
    pub job: usize,
    /// Spec hash.
    pub hash: String,
    /// Optimizer steps it will take.
    pub steps: usize,
    /// Its spec (not written to plan.json, which keeps ids, hashes and steps).
    #[serde(skip)]
    pub spec: RunSpec,
}

/// The expanded sweep.
pub struct Plan {
    /// Jobs in order.
    pub jobs: Vec<Job>,
    /// Every run.
    pub runs: Vec<PlannedRun>,
    /// The model's config.
    pub model: ModelDir,
    /// Every task of the config, in order.
    pub tasks: Vec<TaskInfo>,
    /// The records folder of the config, if any.
    pub records: Option<PathBuf>,
}

impl Plan {
    /// The task named `name`.
    pub fn task(&self, name: &str) -> Option<&TaskInfo> {
        self.tasks.iter().find(|t| t.name() == name)
    }

    /// The state of a planned run: done if its record (with this hash) is in the sweep's runs
    /// folder or in the records folder; changed if either holds it with another hash.
    pub fn state(&self, out: &Path, id: &str, hash: &str) -> RunState {
        let here = run_state(out, id, hash);
        let kept = self
            .records
            .as_deref()
            .map_or(RunState::Missing, |r| run_state_in(r, id, hash));
        match (here, kept) {
            (RunState::Done, _) | (_, RunState::Done) => RunState::Done,
            (RunState::Changed, _) | (_, RunState::Changed) => RunState::Changed,
            _ => RunState::Missing,
        }
    }
}

/// Expands a config into jobs and runs (reads the model's config and counts training rows).
pub fn plan(cfg: &SweepConfig, data_override: Option<&Path>) -> Result<Plan> {
    let md = ModelDir::open(&cfg.model)?;
    let mc = &md.config;
    let inv = inventory(mc);
    let mut data: Option<PathBuf> = None;
    let mut tasks: Vec<TaskInfo> = Vec::new();
    for t in &cfg.tasks {
        let info = match t {
            TaskEntry::Glue(name) => {
                let task: Task = name
                    .parse()
                    .map_err(|e| TrainError::Invalid(format!("task `{name}`: {e}")))?;
                if data.is_none() {
                    data = Some(crate::glue::find_data(
                        data_override.or(cfg.data.as_deref()),
                    )?);
                }
                TaskInfo::glue(task, data.as_deref().expect("found above"))?
            }
            TaskEntry::User(u) => TaskInfo::user(u)?,
        };
        if tasks.iter().any(|x| x.name() == info.name()) {
            return Err(TrainError::Invalid(format!(
                "task `{}` is listed twice",
                info.name()
            )));
        }
        tasks.push(info);
    }
    let mut jobs = Vec::new();
    let mut runs: Vec<PlannedRun> = Vec::new();
    // Maximal spec hash -> the job that trains it.
    let mut maximal_job: std::collections::HashMap<String, usize> = Default::default();
    for task in &tasks {
        let n = task.load(SplitName::Train)?.len();
        let n = cfg.max_train_for(task).map_or(n, |m| n.min(m));
        for &seed in &cfg.seeds {
            let base = RunBase::new(task, &cfg.model, mc, seed, &cfg.device, cfg.precision)?;
            for b in &cfg.baselines {
                let arch = if b.method == "full" {
                    None
                } else {
                    let sp = SearchSpace::from_spec(&b.method, &inv).map_err(|e| {
                        TrainError::Invalid(format!("baseline `{}`: {e}", b.method))
                    })?;
                    Some(Architecture::maximal(&sp, mc)?)
                };
                let spec = base.baseline_spec(
                    Method::parse(&b.method),
                    arch.as_ref(),
                    cfg.recipe_for(task, b.lr),
                    b.lora_init,
                );
                spec.recipe.validate().map_err(|e| {
                    TrainError::Invalid(format!("baseline `{}` on {}: {e}", b.method, task.name()))
                })?;
                let id = baseline_id(task.name(), &b.method, b.tag.as_deref(), seed);
                runs.push(PlannedRun {
                    id: id.clone(),
                    task: task.name().into(),
                    job: jobs.len(),
                    hash: spec.hash(),
                    steps: crate::train::total_steps(&spec.recipe, n),
                    spec: spec.clone(),
                });
                jobs.push(Job::Baseline {
                    task: task.clone(),
                    id,
                    spec,
                    arch,
                });
            }
            for s in &cfg.searches {
                let (sc, maximal) =
                    s.for_task(task)
                        .resolve(&base, mc, cfg.recipe_for(task, s.lr))?;
                let ms = sc.maximal_spec(&maximal);
                let mh = ms.hash();
                let shared = maximal_job.get(&mh).copied();
                let job = shared.unwrap_or(jobs.len());
                if shared.is_none() {
                    runs.push(PlannedRun {
                        id: sc.maximal_id(),
                        task: task.name().into(),
                        job,
                        hash: mh.clone(),
                        steps: crate::train::total_steps(&ms.recipe, n),
                        spec: ms,
                    });
                }
                for p in sc.pruned_runs(&maximal) {
                    runs.push(PlannedRun {
                        id: p.id,
                        task: task.name().into(),
                        job,
                        hash: p.spec.hash(),
                        steps: crate::train::total_steps(&p.spec.recipe, n),
                        spec: p.spec,
                    });
                }
                match shared {
                    Some(j) => match &mut jobs[j] {
                        Job::Search { also, .. } => also.push(sc),
                        Job::Baseline { .. } => unreachable!("maximal_job lists searches"),
                    },
                    None => {
                        maximal_job.insert(mh, job);
                        jobs.push(Job::Search {
                            task: task.clone(),
                            cfg: Box::new(sc),
                            also: Vec::new(),
                        });
                    }
                }
            }
        }
    }
    let mut seen = BTreeSet::new();
    for r in &runs {
        if !seen.insert(r.id.clone()) {
            return Err(TrainError::Invalid(format!(
                "two planned runs share the id `{}`: give one of the entries a `tag`",
                r.id
            )));
        }
    }
    Ok(Plan {
        jobs,
        runs,
        model: md,
        tasks,
        records: cfg.records.clone(),
    })
}

/// `K/N`: shard K (0-based) of N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard, 0..n.
    pub k: usize,
    /// Shard count.
    pub n: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (k, n) = s
            .split_once('/')
            .ok_or_else(|| format!("--shard `{s}`: expected K/N, e.g. 0/4"))?;
        let k: usize = k
            .trim()
            .parse()
            .map_err(|_| format!("--shard `{s}`: K is not a number"))?;
        let n: usize = n
            .trim()
            .parse()
            .map_err(|_| format!("--shard `{s}`: N is not a number"))?;
        if n == 0 || k >= n {
            return Err(format!("--shard `{s}`: need 0 <= K < N"));
        }
        Ok(Shard { k, n })
    }
}

impl Shard {
    /// Whether job `i` belongs to this shard (round robin: deterministic, independent of state).
    pub fn owns(&self, job: usize) -> bool {
        job % self.n == self.k
    }
}
