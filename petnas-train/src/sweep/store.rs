//! A sweep folder on disk: run states, the records folder, the index, temp files, the lock.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use petnas_core::record::RunRecord;

use crate::error::{io_err, Result, TrainError};
use crate::search::slug;

use super::*;

/// Copies a finished run's record and architecture (not its weights) into `records/<id>/`.
pub fn keep_record(records: &Path, run_dir: &Path, id: &str) -> Result<()> {
    let dst = records.join(id);
    std::fs::create_dir_all(&dst).map_err(io_err(&dst))?;
    for f in ["architecture.json", "record.json"] {
        let src = run_dir.join(f);
        if src.exists() {
            let bytes = std::fs::read(&src).map_err(io_err(&src))?;
            petnas_core::io::write_atomic(&dst.join(f), &bytes)?;
        }
    }
    Ok(())
}

/// State of a planned run on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    /// Not there.
    Missing,
    /// There, with the planned spec.
    Done,
    /// There, but made from another config (hash differs).
    Changed,
}

/// Where the runs of a sweep live.
pub fn runs_dir(out: &Path) -> PathBuf {
    out.join("runs")
}

/// The run id of a fixed method's training: the same rule for `train` and for a sweep's
/// baselines, so one run lands in one folder name either way.
pub fn baseline_id(task: &str, method: &str, tag: Option<&str>, seed: u64) -> String {
    let tag = tag.map(|t| format!("-{}", slug(t))).unwrap_or_default();
    format!("{task}-{}{tag}-s{seed}", slug(method))
}

/// The state of run `id` in a sweep folder `out` (its runs live in `out/runs/`).
pub fn run_state(out: &Path, id: &str, hash: &str) -> RunState {
    run_state_in(&runs_dir(out), id, hash)
}

/// The state of run `id` directly under `dir` (`dir/<id>/record.json`).
pub fn run_state_in(dir: &Path, id: &str, hash: &str) -> RunState {
    let p = dir.join(id).join("record.json");
    match RunRecord::load(&p) {
        Ok(r) if r.config_hash == hash => RunState::Done,
        Ok(_) => RunState::Changed,
        Err(_) => RunState::Missing,
    }
}

/// Rebuilds `index.jsonl` (or the shard's index) atomically from the finished run folders.
pub fn write_index(
    out: &Path,
    shard: Option<Shard>,
    ids: Option<&BTreeSet<String>>,
) -> Result<usize> {
    let dir = runs_dir(out);
    let mut lines = String::new();
    let mut n = 0;
    let mut entries: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => Vec::new(),
    };
    entries.sort();
    for p in entries {
        let name = p
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') || ids.is_some_and(|ids| !ids.contains(&name)) {
            continue;
        }
        if let Ok(r) = RunRecord::load(&p.join("record.json")) {
            lines.push_str(
                &serde_json::to_string(&r).map_err(|e| TrainError::Invalid(e.to_string()))?,
            );
            lines.push('\n');
            n += 1;
        }
    }
    let name = match shard {
        Some(s) => format!("index.{}-of-{}.jsonl", s.k, s.n),
        None => "index.jsonl".into(),
    };
    petnas_core::io::write_atomic(&out.join(name), lines.as_bytes())?;
    Ok(n)
}

/// Removes the temporary files an interrupted atomic write of this invocation's own files
/// (`index*.jsonl`, `plan*.json`, `sweep.toml`) left in `out`: `.<name>.tmp.<pid>.<n>`. Another
/// shard's files are left alone: it may be writing them right now.
pub fn clean_temp_files(out: &Path, shard: Option<Shard>) -> usize {
    let own = match shard {
        Some(s) => vec![
            format!("index.{}-of-{}.jsonl", s.k, s.n),
            format!("plan.{}-of-{}.json", s.k, s.n),
        ],
        None => vec![
            "index.jsonl".to_string(),
            "plan.json".to_string(),
            "sweep.toml".to_string(),
        ],
    };
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(out) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if own.iter().any(|f| name.starts_with(&format!(".{f}.tmp.")))
                && std::fs::remove_file(e.path()).is_ok()
            {
                n += 1;
            }
        }
    }
    n
}

/// Removes the `.partial-<id>-<pid>` folders that interrupted runs left, for the runs in `ids`
/// (all when `None`): another shard's partial folder may be a run in progress.
pub fn clean_partials(out: &Path, ids: Option<&BTreeSet<String>>) -> usize {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(runs_dir(out)) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(".partial-") else {
                continue;
            };
            let id = rest.rsplit_once('-').map_or(rest, |(id, _pid)| id);
            if ids.is_none_or(|ids| ids.contains(id)) && std::fs::remove_dir_all(e.path()).is_ok() {
                n += 1;
            }
        }
    }
    n
}

/// The sweep folder's lock, held while a sweep writes there. Two sweeps writing one folder at
/// once would each check the folder before the other wrote and leave a mix of configs. An
/// unsharded sweep holds `.sweep.lock` exclusively; shard K of N holds it shared plus
/// `.sweep.K-of-N.lock` exclusively, so the shards of a job array run side by side while a
/// second copy of any of them, or an unsharded sweep, is refused. The OS drops the locks when
/// the process ends, however it ends.
pub struct SweepLock {
    _files: Vec<std::fs::File>,
}

/// Takes the lock of `out` for this shard, or says who holds it.
pub fn lock(out: &Path, shard: Option<Shard>) -> Result<SweepLock> {
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let open = |name: &str| {
        let p = out.join(name);
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io_err(&p))
    };
    let busy = |what: &str| {
        TrainError::Invalid(format!(
            "another petnas-train sweep is writing {} ({what}); wait for it to finish, or use another --out",
            out.display()
        ))
    };
    let main = open(".sweep.lock")?;
    match shard {
        None => {
            main.try_lock()
                .map_err(|_| busy("a sweep or shard holds .sweep.lock"))?;
            Ok(SweepLock { _files: vec![main] })
        }
        Some(s) => {
            main.try_lock_shared()
                .map_err(|_| busy("an unsharded sweep holds .sweep.lock"))?;
            let name = format!(".sweep.{}-of-{}.lock", s.k, s.n);
            let own = open(&name)?;
            own.try_lock()
                .map_err(|_| busy(&format!("shard {}/{} is already running", s.k, s.n)))?;
            Ok(SweepLock {
                _files: vec![main, own],
            })
        }
    }
}
