//! Helpers shared by the end-to-end tests: the two binaries (built on first use), tiny model
//! folders, the GLUE data, sweep configs and comparisons of run folders.
//!
//! The binaries belong to other packages, so `CARGO_BIN_EXE_*` is not set here; they are built
//! once per test process with `cargo build --workspace --bins --tests` into the target directory
//! this test executable lives in, and run from there. That is the feature set `cargo test
//! --workspace` resolved (dev-dependencies included), and the build runs without the variables
//! cargo sets for a test process, so after the test build it compiles nothing.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Once;

use serde_json::Value;

/// The recipe flags of `train` and `search` that keep a run to a fraction of a second.
pub const TINY: [&str; 11] = [
    "--max-train",
    "64",
    "--max-dev",
    "32",
    "--max-len",
    "32",
    "--batch-size",
    "8",
    "--max-steps",
    "3",
    "--quiet",
];

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `<target>/<profile>`: this executable is `<target>/<profile>/deps/<name>-<hash>`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable lives in <target>/<profile>/deps")
        .to_path_buf()
}

fn ensure_built() {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        let dir = profile_dir();
        let target = dir.parent().expect("<target>/<profile> has a parent");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(root())
            .env("CARGO_TARGET_DIR", target)
            .args(["build", "--workspace", "--bins", "--tests"]);
        // `cargo test` runs this process with the package's CARGO_PKG_* / CARGO_MANIFEST_* set.
        // ring's build script (under polars' object_store) reruns when CARGO_PKG_NAME changes, and
        // everything above it (all of polars) would then rebuild, in the test and again in the next
        // `cargo test`. The inner build must see the environment a shell gives cargo.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if k.starts_with("CARGO_PKG_")
                || k.starts_with("CARGO_MANIFEST_")
                || k.starts_with("CARGO_BIN_")
                || [
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "OUT_DIR",
                ]
                .contains(&k.as_str())
            {
                cmd.env_remove(&k);
            }
        }
        match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => {}
            Some("release") => {
                cmd.arg("--release");
            }
            Some(p) => {
                cmd.args(["--profile", p]);
            }
        }
        let out = cmd.output().expect("running cargo build");
        assert!(
            out.status.success(),
            "cargo build of the binaries failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// Path of a built binary (`petnas-train` or `petnas-analyze`).
pub fn bin(name: &str) -> PathBuf {
    ensure_built();
    let p = profile_dir().join(name);
    assert!(p.exists(), "{} not found after building", p.display());
    p
}

/// What a binary did.
pub struct Run {
    /// Exit status.
    pub code: Option<i32>,
    /// Stdout.
    pub stdout: String,
    /// Stderr.
    pub stderr: String,
    /// The command line, for messages.
    pub cmdline: String,
}

impl Run {
    fn from(cmdline: String, o: Output) -> Self {
        Self {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            cmdline,
        }
    }

    /// Asserts a zero exit.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code,
            Some(0),
            "`{}` failed\nstdout:\n{}\nstderr:\n{}",
            self.cmdline,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Asserts a non-zero exit whose stderr contains every needle; returns stderr.
    #[track_caller]
    pub fn fails_with(self, needles: &[&str]) -> String {
        assert!(
            self.code.is_some_and(|c| c != 0),
            "`{}` should have failed, exit {:?}\nstdout:\n{}\nstderr:\n{}",
            self.cmdline,
            self.code,
            self.stdout,
            self.stderr
        );
        for n in needles {
            assert!(
                self.stderr.contains(n),
                "`{}`: stderr lacks {n:?}:\n{}",
                self.cmdline,
                self.stderr
            );
        }
        assert!(
            !self.stderr.contains("panicked"),
            "`{}` panicked instead of reporting an error:\n{}",
            self.cmdline,
            self.stderr
        );
        self.stderr
    }
}

/// A command for a binary with a quiet, reproducible environment: no backtraces in error
/// messages, and the same thread count in every run (results are compared bit for bit).
pub fn command(name: &str) -> Command {
    let mut c = Command::new(bin(name));
    c.env("RUST_BACKTRACE", "0")
        .env("RAYON_NUM_THREADS", "2")
        .env_remove("PETNAS_MODEL")
        .env_remove("PETNAS_DATA");
    c
}

fn run(name: &str, args: &[&str]) -> Run {
    let out = command(name)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {name}: {e}"));
    Run::from(format!("{name} {}", args.join(" ")), out)
}

/// Runs `petnas-train ARGS`.
pub fn train(args: &[&str]) -> Run {
    run("petnas-train", args)
}

/// Runs `petnas-analyze ARGS`.
pub fn analyze(args: &[&str]) -> Run {
    run("petnas-analyze", args)
}

/// A path as `&str` (temporary directories are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// The GLUE folder: $PETNAS_DATA, else the shared copy next to the workspace.
pub fn glue() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let p = std::env::var_os("PETNAS_DATA")
            .map(PathBuf::from)
            .unwrap_or_else(|| root().join("../shared/data/glue"));
        assert!(
            p.join("RTE/train.tsv").exists(),
            "GLUE data not found at {} (set PETNAS_DATA)",
            p.display()
        );
        p
    })
}

/// The real MiniLM folder, fetched with data/fetch-model when missing.
pub fn minilm() -> PathBuf {
    static FETCH: Once = Once::new();
    let dir = root().join("data/models/all-MiniLM-L6-v2");
    FETCH.call_once(|| {
        if !dir.join("tokenizer.json").exists() || !dir.join("model.safetensors").exists() {
            let st = Command::new("bash")
                .arg(root().join("data/fetch-model"))
                .status()
                .expect("running data/fetch-model");
            assert!(st.success(), "data/fetch-model failed");
        }
    });
    dir
}

/// Writes a tiny random model (2 layers, hidden 32) of `family` into `dir`.
pub fn make_tiny(family: &str, dir: &Path, seed: u64) {
    let tok = minilm().join("tokenizer.json");
    let seed = seed.to_string();
    train(&[
        "tiny-model",
        "--family",
        family,
        "--tokenizer",
        s(&tok),
        "--out",
        s(dir),
        "--seed",
        &seed,
    ])
    .ok();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(dir.join(f).exists(), "tiny-model wrote no {f}");
    }
}

/// A tiny model of `family` (seed 0) in `tmp/<family>`.
pub fn tiny(tmp: &Path, family: &str) -> PathBuf {
    let dir = tmp.join(format!("tiny-{family}"));
    make_tiny(family, &dir, 0);
    dir
}

/// Copies a flat folder (model folders, GLUE task folders).
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
}

/// A sweep config on `model` with the tiny recipe; `body` adds tasks, seeds, baselines, searches.
pub fn sweep_toml(model: &Path, body: &str) -> String {
    format!(
        "name = \"e2e\"\nmodel = {:?}\ndata = {:?}\n{body}\n[recipe]\nepochs = 1\nmax_len = 32\nbatch_size = 8\nmax_steps = 3\nmax_train = 64\nmax_dev = 32\n",
        s(model),
        s(glue())
    )
}

/// A baseline and a search with 2 budgets × 2 modes × 2 criteria on RTE and STS-B: 20 runs.
pub fn study(model: &Path) -> String {
    sweep_toml(
        model,
        r#"tasks = ["rte", "stsb"]
seeds = [0]

[[baselines]]
method = "bitfit"
lr = 1e-3

[[searches]]
space = "mam16"
budgets = [2000, "5k"]
modes = ["structured", "unstructured"]
criteria = ["mean", "random"]
lr = 1e-3
"#,
    )
}

/// Names of the finished run folders of a sweep (or a train/search `--out`).
pub fn run_names(runs: &Path) -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(runs) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// Names under `dir` that an interrupted or failed run may leave: `.partial-*` folders and
/// `.*.tmp.*` files of atomic writes.
pub fn leftovers(dir: &Path) -> Vec<String> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(".partial-") || (n.starts_with('.') && n.contains(".tmp.")) {
                v.push(n);
            }
        }
    }
    v
}

/// Reads a JSON file.
pub fn json(path: &Path) -> Value {
    let t = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&t).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The lines of `index.jsonl` (or another JSON-lines file).
pub fn jsonl(path: &Path) -> Vec<Value> {
    let t = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    t.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}: {l}", path.display())))
        .collect()
}

/// A record without what legitimately differs between two identical runs: when and how fast.
pub fn normalized(mut r: Value) -> Value {
    let o = r.as_object_mut().expect("record is an object");
    o.remove("created_unix");
    let res = o
        .get_mut("result")
        .and_then(Value::as_object_mut)
        .expect("record has a result");
    res.remove("wall_seconds");
    res.remove("examples_per_second");
    r
}

/// A record file, normalized.
pub fn record(dir: &Path) -> Value {
    normalized(json(&dir.join("record.json")))
}

/// One tensor of a safetensors file: dtype, shape, bytes.
pub type TensorBytes = (String, Vec<usize>, Vec<u8>);

/// A safetensors file as content: metadata and each tensor's dtype, shape and bytes, by name
/// (the byte layout may differ: metadata maps have no fixed order).
pub fn safetensors_content(
    path: &Path,
) -> (BTreeMap<String, String>, BTreeMap<String, TensorBytes>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let md: BTreeMap<String, String> = meta
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            (
                n,
                (
                    format!("{:?}", v.dtype()),
                    v.shape().to_vec(),
                    v.data().to_vec(),
                ),
            )
        })
        .collect();
    (md, tensors)
}

/// Asserts two run folders hold the same results: the same files, equal records (but for
/// timing), byte-identical architectures and identical tensors (the data folder they name may
/// differ).
#[track_caller]
pub fn assert_same_run(a: &Path, b: &Path) {
    let files = |d: &Path| run_names(d);
    assert_eq!(
        files(a),
        files(b),
        "{} and {} hold different files",
        a.display(),
        b.display()
    );
    assert_eq!(
        record(a),
        record(b),
        "records of {} and {} differ",
        a.display(),
        b.display()
    );
    for f in files(a) {
        let (pa, pb) = (a.join(&f), b.join(&f));
        // The log has timings; inputs.json names the data folder, which may differ on purpose.
        if f == "record.json" || f == "log.txt" || f == "inputs.json" {
            continue;
        }
        if f.ends_with(".safetensors") {
            let (ma, ta) = safetensors_content(&pa);
            let (mb, tb) = safetensors_content(&pb);
            assert_eq!(
                ma,
                mb,
                "metadata of {} and {} differ",
                pa.display(),
                pb.display()
            );
            assert_eq!(
                ta.keys().collect::<Vec<_>>(),
                tb.keys().collect::<Vec<_>>(),
                "tensor names of {} and {} differ",
                pa.display(),
                pb.display()
            );
            for (k, va) in &ta {
                assert!(
                    va == &tb[k],
                    "tensor {k} of {} and {} differs",
                    pa.display(),
                    pb.display()
                );
            }
        } else {
            assert!(
                std::fs::read(&pa).unwrap() == std::fs::read(&pb).unwrap(),
                "{} and {} differ",
                pa.display(),
                pb.display()
            );
        }
    }
}

/// `record.json` fields as numbers.
pub fn num(v: &Value, ptr: &str) -> f64 {
    v.pointer(ptr)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no number at {ptr} in {v}"))
}

/// A string field.
pub fn text<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {ptr} in {v}"))
}
