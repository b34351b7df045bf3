//! Running a plan: maximal trainings, pruned runs and baselines, in order, resumable.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::Device;
use petnas_core::record::{RunRecord, RunSpec};

use crate::error::{io_err, Result, TrainError};
use crate::model::pet::init_map;
use crate::run::{self, DataLimits, RunInputs, RunPlan};
use crate::search::{self, Prepared, SearchHooks};
use crate::task::TaskInfo;

use super::*;

/// Options of one sweep invocation.
pub struct SweepOptions {
    /// Output folder.
    pub out: PathBuf,
    /// Only this shard's jobs.
    pub shard: Option<Shard>,
    /// Redo runs whose config changed instead of stopping.
    pub rerun_changed: bool,
    /// Draw progress bars.
    pub progress: bool,
    /// Runs trained at once (CPU), each on its own pool of `threads_per_job` compute threads.
    /// Results do not depend on it: a run gives the same bits on any number of threads.
    pub jobs: usize,
    /// Compute threads of each of the `jobs` runs (with `jobs = 1` the process's global pool is
    /// used as it is).
    pub threads_per_job: usize,
}

/// What a sweep invocation did.
#[derive(Debug, Default)]
pub struct SweepSummary {
    /// Runs planned for this shard.
    pub planned: usize,
    /// Already done before this call.
    pub skipped: usize,
    /// Completed in this call.
    pub completed: usize,
    /// Failed (diverged) in this call.
    pub failed: usize,
}

/// Runs every missing run of the plan (this shard's part), writing as it goes.
pub fn execute(
    cfg: &SweepConfig,
    config_text: &str,
    plan: &Plan,
    opts: &SweepOptions,
    device: &Device,
) -> Result<SweepSummary> {
    let out = &opts.out;
    let _lock = lock(out, opts.shard)?;
    std::fs::create_dir_all(runs_dir(out)).map_err(io_err(out))?;
    let mine: Vec<&PlannedRun> = plan
        .runs
        .iter()
        .filter(|r| opts.shard.is_none_or(|s| s.owns(r.job)))
        .collect();
    let my_ids: BTreeSet<String> = mine.iter().map(|r| r.id.clone()).collect();
    let cleaned = clean_partials(out, Some(&my_ids)) + clean_temp_files(out, opts.shard);
    if cleaned > 0 {
        tracing::info!(cleaned, "removed what interrupted runs and writes left");
    }
    let changed: Vec<&str> = mine
        .iter()
        .filter(|r| plan.state(out, &r.id, &r.hash) == RunState::Changed)
        .map(|r| r.id.as_str())
        .collect();
    if !changed.is_empty() && !opts.rerun_changed {
        return Err(TrainError::Invalid(format!(
            "{} finished run(s) in {} were made with a different config (e.g. {}); use another --out, or --rerun-changed to redo them",
            changed.len(),
            out.display(),
            changed.iter().take(3).copied().collect::<Vec<_>>().join(", ")
        )));
    }
    // Only now: a refused config must not replace the copy of the one the runs were made with.
    petnas_core::io::write_atomic(&out.join("sweep.toml"), config_text.as_bytes())?;
    let plan_json: Vec<_> = mine
        .iter()
        .map(|r| serde_json::json!({"id": r.id, "hash": r.hash, "steps": r.steps}))
        .collect();
    let pname = match opts.shard {
        Some(s) => format!("plan.{}-of-{}.json", s.k, s.n),
        None => "plan.json".into(),
    };
    petnas_core::io::write_atomic(
        &out.join(pname),
        serde_json::to_string_pretty(&plan_json)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    let ids: BTreeSet<String> = mine.iter().map(|r| r.id.clone()).collect();
    let hashes: HashMap<String, String> = mine
        .iter()
        .map(|r| (r.id.clone(), r.hash.clone()))
        .collect();
    let mut summary = SweepSummary {
        planned: mine.len(),
        ..Default::default()
    };
    summary.skipped = mine
        .iter()
        .filter(|r| plan.state(out, &r.id, &r.hash) == RunState::Done)
        .count();

    let multi = if opts.progress {
        Some(indicatif::MultiProgress::new())
    } else {
        None
    };
    let overall = match &multi {
        Some(m) => {
            let b = m.add(indicatif::ProgressBar::new(mine.len() as u64));
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "sweep [{bar:30}] {pos}/{len} runs, ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_position(summary.skipped as u64);
            b
        }
        None => indicatif::ProgressBar::hidden(),
    };
    let say = |line: String| {
        tracing::info!("{line}");
        match &multi {
            Some(m) => {
                let _ = m.println(&line);
            }
            None => println!("{line}"),
        }
    };
    let max_len = cfg.max_len();
    let is_done = |id: &str, _spec: &RunSpec| -> bool {
        let h = hashes.get(id).cloned().unwrap_or_default();
        plan.state(out, id, &h) == RunState::Done
    };
    // Every record goes through here, one at a time whichever worker made it.
    let summary = std::sync::Mutex::new(summary);
    let on_record = |r: &RunRecord| {
        let mut sm = summary.lock().unwrap_or_else(|e| e.into_inner());
        match &r.result.status {
            petnas_core::record::RunStatus::Completed => sm.completed += 1,
            petnas_core::record::RunStatus::Failed { .. } => sm.failed += 1,
        }
        say(run::summary_line(r));
        overall.inc(1);
        if let Some(records) = &plan.records {
            if let Err(e) = keep_record(records, &runs_dir(out).join(&r.id), &r.id) {
                say(format!(
                    "warning: record of {} not kept in {}: {e}",
                    r.id,
                    records.display()
                ));
            }
        }
        if let Err(e) = write_index(out, opts.shard, Some(&ids)) {
            tracing::warn!("index not written: {e}");
        }
    };
    let states: Vec<(usize, JobState)> = plan
        .jobs
        .iter()
        .enumerate()
        .filter(|(ji, _)| opts.shard.is_none_or(|s| s.owns(*ji)))
        .filter(|(ji, _)| {
            !mine
                .iter()
                .filter(|r| r.job == *ji)
                .all(|r| is_done(&r.id, &r.spec))
        })
        .map(|(ji, j)| {
            (
                ji,
                JobState::Todo {
                    search: matches!(j, Job::Search { .. }),
                },
            )
        })
        .collect();
    let sched = Scheduler {
        state: std::sync::Mutex::new(SchedState {
            jobs: states,
            active: 0,
            error: None,
        }),
        wake: std::sync::Condvar::new(),
    };
    let work = || {
        // Each worker keeps one task's data and model loaded at a time.
        let mut inputs: Option<(TaskInfo, RunInputs)> = None;
        while let Some(unit) = sched.next() {
            let ji = unit.job();
            let task = match &plan.jobs[ji] {
                Job::Baseline { task, .. } | Job::Search { task, .. } => task,
            };
            let result = (|| -> Result<Option<Prepared>> {
                if inputs.as_ref().is_none_or(|(t, _)| t != task) {
                    drop(inputs.take()); // free the previous task's data first
                    let limits = DataLimits {
                        max_train: cfg.max_train_for(task),
                        max_dev: cfg.recipe.max_dev,
                    };
                    inputs = Some((
                        task.clone(),
                        RunInputs::load(&cfg.model, task, max_len, limits, device)?,
                    ));
                }
                let inp = &inputs.as_ref().expect("loaded above").1;
                match (&unit, &plan.jobs[ji]) {
                    (Unit::Baseline(_), Job::Baseline { id, spec, arch, .. }) => {
                        let start = arch
                            .as_ref()
                            .map(|a| init_map(a, spec.seed, spec.lora_init))
                            .unwrap_or_default();
                        let o = run::execute(
                            inp,
                            RunPlan {
                                spec: spec.clone(),
                                arch: arch.as_ref(),
                                start: &start,
                                criterion: None,
                                progress: multi.clone(),
                            },
                            id,
                            &runs_dir(out),
                        )?;
                        on_record(&o.record);
                        Ok(None)
                    }
                    (Unit::Prepare(_), Job::Search { cfg: sc, also, .. }) => {
                        let mut rec = |r: &RunRecord| on_record(r);
                        search::prepare(
                            inp,
                            &prepare_config(sc, also),
                            &runs_dir(out),
                            SearchHooks {
                                is_done: &is_done,
                                on_record: &mut rec,
                                progress: multi.clone(),
                            },
                        )
                    }
                    (Unit::Pruned(_, prep, which, p), Job::Search { cfg: sc, also, .. }) => {
                        let sc = match which {
                            0 => sc,
                            k => &also[k - 1],
                        };
                        let r =
                            search::run_pruned(inp, sc, prep, p, &runs_dir(out), multi.clone())?;
                        on_record(&r);
                        Ok(None)
                    }
                    _ => unreachable!("units are made from their job's kind"),
                }
            })();
            let pruned = |prep: &Prepared, ji: usize| -> Vec<(usize, search::PrunedRun)> {
                match &plan.jobs[ji] {
                    Job::Search { cfg: sc, also, .. } => std::iter::once(&**sc)
                        .chain(also)
                        .enumerate()
                        .flat_map(|(k, c)| {
                            c.pruned_runs(prep.maximal())
                                .into_iter()
                                .map(move |p| (k, p))
                        })
                        .filter(|(_, p)| !is_done(&p.id, &p.spec))
                        .collect(),
                    Job::Baseline { .. } => Vec::new(),
                }
            };
            sched.finish(unit, result, pruned);
        }
    };
    if opts.jobs <= 1 {
        work();
    } else {
        let pools = (0..opts.jobs)
            .map(|_| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(opts.threads_per_job.max(1))
                    .start_handler(|_| crate::model::cpu::set_flush_denormals())
                    .build()
                    .map_err(|e| TrainError::Invalid(format!("--jobs: a thread pool: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        std::thread::scope(|sc| {
            for pool in &pools {
                let work = &work;
                sc.spawn(move || {
                    crate::model::cpu::set_flush_denormals();
                    pool.install(work)
                });
            }
        });
    }
    let summary = summary.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = sched
        .state
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .error
    {
        return Err(e);
    }
    overall.finish_and_clear();
    write_index(out, opts.shard, Some(&ids))?;
    Ok(summary)
}

/// The search that prepares a job's maximal training: its owner, asking for every criterion
/// and re-initialisation any of the searches sharing the training needs (a saved criterion that
/// cannot give one of them is not enough; `keep` needs the trained values).
fn prepare_config(
    owner: &search::SearchConfig,
    also: &[search::SearchConfig],
) -> search::SearchConfig {
    let mut c = owner.clone();
    for a in also {
        for k in &a.criteria {
            if !c.criteria.contains(k) {
                c.criteria.push(*k);
            }
        }
        for r in &a.reinits {
            if !c.reinits.contains(r) {
                c.reinits.push(*r);
            }
        }
    }
    c
}

/// One piece of work of a sweep: a baseline run, a search's maximal training (or the loading
/// of its saved criterion), or one pruned retraining of a prepared search.
enum Unit {
    Baseline(usize),
    Prepare(usize),
    /// Job, its prepared search, which of the job's searches (0: the owner, k: `also[k - 1]`),
    /// the retraining.
    Pruned(usize, std::sync::Arc<Prepared>, usize, search::PrunedRun),
}

impl Unit {
    fn job(&self) -> usize {
        match self {
            Unit::Baseline(j) | Unit::Prepare(j) | Unit::Pruned(j, ..) => *j,
        }
    }
}

enum JobState {
    /// Not started (a search or a baseline).
    Todo { search: bool },
    /// A baseline training or a maximal training is running.
    Running,
    /// The search is prepared: its retrainings not handed out yet, and how many are running.
    Ready {
        prep: std::sync::Arc<Prepared>,
        left: std::collections::VecDeque<(usize, search::PrunedRun)>,
        running: usize,
    },
    /// Nothing left.
    Over,
}

struct SchedState {
    jobs: Vec<(usize, JobState)>,
    active: usize,
    error: Option<TrainError>,
}

/// Hands out units in plan order: the first job not started, or the next retraining of a
/// prepared search, whichever comes first; a search's retrainings wait for its maximal run. With
/// one worker this is the order of the plan, run by run. The first error stops the handing out
/// (runs under way finish) and is what the sweep returns.
struct Scheduler {
    state: std::sync::Mutex<SchedState>,
    wake: std::sync::Condvar,
}

impl Scheduler {
    /// The next unit to run, waiting while only units that depend on running ones are left;
    /// `None` when nothing is left (or after an error).
    fn next(&self) -> Option<Unit> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if st.error.is_some() {
                return None;
            }
            let mut unit = None;
            for (ji, js) in st.jobs.iter_mut() {
                match js {
                    JobState::Todo { search } => {
                        unit = Some(if *search {
                            Unit::Prepare(*ji)
                        } else {
                            Unit::Baseline(*ji)
                        });
                        *js = JobState::Running;
                        break;
                    }
                    JobState::Ready {
                        prep,
                        left,
                        running,
                    } => {
                        if let Some((k, p)) = left.pop_front() {
                            *running += 1;
                            unit = Some(Unit::Pruned(*ji, prep.clone(), k, p));
                            break;
                        }
                    }
                    JobState::Running | JobState::Over => {}
                }
            }
            if unit.is_some() {
                st.active += 1;
                return unit;
            }
            if st.active == 0 {
                return None;
            }
            st = self.wake.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Records what a unit gave: a prepared search's retrainings (`pruned` lists those still to
    /// do) become available; an error stops the handing out.
    fn finish(
        &self,
        unit: Unit,
        result: Result<Option<Prepared>>,
        pruned: impl Fn(&Prepared, usize) -> Vec<(usize, search::PrunedRun)>,
    ) {
        let ji = unit.job();
        // Listing the retrainings reads run folders: outside the lock.
        let ready = match (&unit, &result) {
            (Unit::Prepare(_), Ok(Some(prep))) => Some(pruned(prep, ji)),
            _ => None,
        };
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.active -= 1;
        let slot = st
            .jobs
            .iter_mut()
            .find(|(j, _)| *j == ji)
            .map(|(_, s)| s)
            .expect("a unit comes from a listed job");
        match result {
            Err(e) => {
                *slot = JobState::Over;
                if st.error.is_none() {
                    st.error = Some(e);
                }
            }
            Ok(prep) => match unit {
                Unit::Baseline(_) => *slot = JobState::Over,
                Unit::Prepare(_) => {
                    *slot = match (prep, ready) {
                        (Some(prep), Some(left)) if !left.is_empty() => JobState::Ready {
                            prep: std::sync::Arc::new(prep),
                            left: left.into(),
                            running: 0,
                        },
                        _ => JobState::Over,
                    }
                }
                Unit::Pruned(..) => {
                    if let JobState::Ready { left, running, .. } = slot {
                        *running -= 1;
                        if left.is_empty() && *running == 0 {
                            // Frees the criterion and initial values.
                            *slot = JobState::Over;
                        }
                    }
                }
            },
        }
        drop(st);
        self.wake.notify_all();
    }
}

/// Measured examples/s per (task, full fine-tuning) for the cost estimate.
pub type Throughput = BTreeMap<(String, bool), f64>;

/// Whether a planned run fine-tunes every weight (several times slower per example than a PET).
pub fn is_full(spec: &RunSpec) -> bool {
    spec.method.is_full()
}

/// Human summary of a plan: counts, trainings, steps and an estimated cost.
pub fn describe(
    plan: &Plan,
    out: &Path,
    shard: Option<Shard>,
    examples_per_s: Option<&Throughput>,
    batch: usize,
) -> String {
    let mine: Vec<&PlannedRun> = plan
        .runs
        .iter()
        .filter(|r| shard.is_none_or(|s| s.owns(r.job)))
        .collect();
    let done = mine
        .iter()
        .filter(|r| plan.state(out, &r.id, &r.hash) == RunState::Done)
        .count();
    let changed = mine
        .iter()
        .filter(|r| plan.state(out, &r.id, &r.hash) == RunState::Changed)
        .count();
    let todo: Vec<&&PlannedRun> = mine
        .iter()
        .filter(|r| plan.state(out, &r.id, &r.hash) != RunState::Done)
        .collect();
    let steps: usize = todo.iter().map(|r| r.steps).sum();
    let searches = plan
        .jobs
        .iter()
        .enumerate()
        .filter(|(i, j)| matches!(j, Job::Search { .. }) && shard.is_none_or(|s| s.owns(*i)))
        .count();
    let mut by_task: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &mine {
        *by_task.entry(r.task.as_str()).or_default() += 1;
    }
    let mut s = format!(
        "plan: {} runs ({} trainings of a maximal search space serve {} pruned runs), {} done, {} to do, {} changed\n",
        mine.len(),
        searches,
        mine.len().saturating_sub(searches).saturating_sub(plan.jobs.iter().enumerate().filter(|(i, j)| matches!(j, Job::Baseline { .. }) && shard.is_none_or(|s| s.owns(*i))).count()),
        done,
        todo.len(),
        changed
    );
    for (t, n) in by_task {
        s.push_str(&format!("  {t}: {n} runs\n"));
    }
    s.push_str(&format!(
        "  optimizer steps to do: {steps} (batch {batch})\n"
    ));
    if let Some(eps) = examples_per_s {
        let mut secs = 0.0;
        let mut unknown = 0usize;
        for r in &todo {
            match eps.get(&(r.task.clone(), is_full(&r.spec))) {
                Some(e) => secs += r.steps as f64 * batch as f64 / e.max(1e-9),
                None => unknown += 1,
            }
        }
        let t = if secs < 3600.0 {
            format!("{:.1} min", secs / 60.0)
        } else {
            format!("{:.1} h", secs / 3600.0)
        };
        let rates: Vec<String> = eps
            .iter()
            .map(|((task, full), e)| format!("{task}{} {e:.0}", if *full { " full" } else { "" }))
            .collect();
        s.push_str(&format!(
            "  estimated training time: {t}, plus evaluation (measured examples/s: {})\n",
            rates.join(", ")
        ));
        if unknown > 0 {
            s.push_str(&format!(
                "  ({unknown} runs without a throughput figure are not counted)\n"
            ));
        }
    }
    s
}
