//! An interrupted sweep (`kill -9`) resumes where it stopped: finished runs are kept as they are,
//! interrupted ones leave nothing behind, and the end result equals an uninterrupted sweep's,
//! bit for bit (CPU training is deterministic per seed).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use common::*;

/// record.json of each finished run: (mtime, created_unix, full text).
fn finished(runs: &Path) -> BTreeMap<String, (SystemTime, u64, String)> {
    run_names(runs)
        .into_iter()
        .map(|n| {
            let p = runs.join(&n).join("record.json");
            let t = std::fs::read_to_string(&p).unwrap_or_else(|e| {
                panic!("{} is a run folder without a record: {e}", p.display())
            });
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            (
                n,
                (
                    std::fs::metadata(&p).unwrap().modified().unwrap(),
                    v["created_unix"].as_u64().unwrap(),
                    t,
                ),
            )
        })
        .collect()
}

/// Starts the sweep, kills it with SIGKILL `delay` after `after` run folders exist, and returns
/// how many existed when it died.
fn start_and_kill(cfg: &Path, out: &Path, after: usize, delay: Duration) -> usize {
    let mut child = command("petnas-train")
        .args([
            "sweep",
            "--config",
            s(cfg),
            "--out",
            s(out),
            "--quiet",
            "--no-estimate",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the sweep");
    let runs = out.join("runs");
    let t0 = Instant::now();
    loop {
        if run_names(&runs).len() >= after {
            break;
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!("the sweep ended ({st}) before {after} runs were done");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "no {after} runs after 5 minutes"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(delay);
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    run_names(&runs).len()
}

#[test]
fn killed_sweep_resumes_to_the_same_result() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny(tmp.path(), "bert");
    let cfg = tmp.path().join("study.toml");
    std::fs::write(&cfg, study(&model)).unwrap();

    let reference = tmp.path().join("reference");
    train(&[
        "sweep",
        "--config",
        s(&cfg),
        "--out",
        s(&reference),
        "--quiet",
        "--no-estimate",
    ])
    .ok();
    let all = run_names(&reference.join("runs"));
    assert_eq!(all.len(), 20);

    // Kill points: during the first search's maximal training (1 folder: the baseline), right
    // after the maximal run appears (its criterion must already be saved), in the middle of a
    // pruned retraining, and in the second task.
    for (after, delay_ms) in [(1, 0), (2, 0), (6, 30), (12, 0)] {
        let out = tmp.path().join(format!("killed-after-{after}"));
        let done = start_and_kill(&cfg, &out, after, Duration::from_millis(delay_ms));
        assert!(
            done < all.len(),
            "the sweep finished before the kill; nothing was tested"
        );
        let runs = out.join("runs");
        let before = finished(&runs);
        assert_eq!(before.len(), done);
        eprintln!(
            "killed after {done} finished runs; left behind: {:?}",
            leftovers(&runs)
        );
        if after == 2 {
            // What a kill while a run folder is being written leaves (the window is too short to
            // hit reliably by timing): a half-written `.partial-*` folder.
            let partial = runs.join(".partial-rte-mam16-s2000-mean-same-s0-4242");
            std::fs::create_dir_all(&partial).unwrap();
            std::fs::write(partial.join("record.json"), "{\"version\": 1, \"id\":").unwrap();
        }

        let r = train(&[
            "sweep",
            "--config",
            s(&cfg),
            "--out",
            s(&out),
            "--quiet",
            "--no-estimate",
        ])
        .ok();
        assert!(
            r.stdout
                .contains(&format!("20 planned, {done} already done")),
            "kill after {after}: the resumed sweep should skip the {done} finished runs:\n{}",
            r.stdout
        );
        assert!(r.stdout.contains("0 failed"), "{}", r.stdout);

        // Finished runs were not redone: same record, same file.
        let after_resume = finished(&runs);
        for (id, (mtime, created, text)) in &before {
            let (m2, c2, t2) = &after_resume[id];
            assert_eq!(
                (mtime, created),
                (m2, c2),
                "kill after {after}: {id} was redone"
            );
            assert_eq!(text, t2, "kill after {after}: {id} changed");
        }
        assert_eq!(run_names(&runs), all);
        assert!(
            leftovers(&runs).is_empty(),
            "kill after {after}: left {:?}",
            leftovers(&runs)
        );
        let index = jsonl(&out.join("index.jsonl"));
        assert_eq!(index.len(), 20);
        for r in &index {
            assert_eq!(text(r, "/result/status"), "completed");
        }

        // And the results are those of the uninterrupted sweep.
        for id in &all {
            assert_same_run(&runs.join(id), &reference.join("runs").join(id));
        }
    }
}

/// A maximal run folder without its criterion file (a folder from before the file was written
/// with the run, or a damaged one) must not silently end the search: the maximal training is
/// redone, and the missing pruned run comes out as it would have.
#[test]
fn search_without_criterion_file_retrains_the_maximal_run() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny(tmp.path(), "bert");
    let cfg = tmp.path().join("study.toml");
    std::fs::write(&cfg, study(&model)).unwrap();
    let out = tmp.path().join("sweep");
    train(&[
        "sweep",
        "--config",
        s(&cfg),
        "--out",
        s(&out),
        "--quiet",
        "--no-estimate",
    ])
    .ok();
    let runs = out.join("runs");
    let saved = tmp.path().join("saved");
    let id = "rte-mam16-u2000-random-same-s0";
    copy_dir(&runs.join(id), &saved);
    std::fs::remove_file(runs.join("rte-mam16-maximal-s0/criterion.safetensors")).unwrap();
    std::fs::remove_dir_all(runs.join(id)).unwrap();

    let r = train(&[
        "sweep",
        "--config",
        s(&cfg),
        "--out",
        s(&out),
        "--quiet",
        "--no-estimate",
    ])
    .ok();
    assert!(
        r.stdout.contains(&format!("{id}: completed")),
        "{}",
        r.stdout
    );
    assert!(runs
        .join("rte-mam16-maximal-s0/criterion.safetensors")
        .exists());
    assert_same_run(&runs.join(id), &saved);
    assert_eq!(jsonl(&out.join("index.jsonl")).len(), 20);
}
