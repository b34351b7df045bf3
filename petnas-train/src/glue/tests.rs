//! Unit tests of the GLUE reader on synthetic files (the real files: `tests/glue_real_data.rs`).

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "petnas-glue-test-{}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            nanos
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    /// Writes `<dir>/<TASK>/<file>` and returns its path.
    fn write(&self, task_dir: &str, file: &str, contents: &[u8]) -> PathBuf {
        let dir = self.0.join(task_dir);
        std::fs::create_dir_all(&dir).expect("create task dir");
        let path = dir.join(file);
        std::fs::write(&path, contents).expect("write test file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ex(a: &str, b: Option<&str>, label: Label) -> Example {
    Example {
        text_a: a.to_string(),
        text_b: b.map(str::to_string),
        label,
    }
}

/// Loads `contents` as `<TASK>/<file>` and returns the error's message (panics on success).
fn error_of(task: Task, file: &str, contents: &str) -> (String, GlueError) {
    let tmp = TempDir::new();
    let path = tmp.write(task.dir_name(), file, contents.as_bytes());
    match load_file(&path, task) {
        Ok(v) => panic!(
            "{task} {file}: expected an error, loaded {} examples",
            v.len()
        ),
        Err(e) => (e.to_string(), e),
    }
}

// ---------- Task ----------

#[test]
fn task_names_round_trip_through_from_str_and_serde() {
    for task in Task::ALL {
        assert_eq!(task.name().parse::<Task>(), Ok(task));
        let json = format!("\"{}\"", task.name());
        assert_eq!(serde_json::to_string(&task).expect("serialize"), json);
        assert_eq!(
            serde_json::from_str::<Task>(&json).expect("deserialize"),
            task
        );
    }
    assert!(serde_json::from_str::<Task>("\"MNLI-mm\"").is_err());
}

#[test]
fn task_from_str_accepts_common_spellings() {
    let cases = [
        ("SST-2", Task::Sst2),
        ("sst-2", Task::Sst2),
        ("sst2", Task::Sst2),
        ("STS-B", Task::Stsb),
        ("stsb", Task::Stsb),
        ("sts_b", Task::Stsb),
        ("CoLA", Task::Cola),
        ("MRPC", Task::Mrpc),
        ("QQP", Task::Qqp),
        ("MNLI", Task::Mnli),
        ("mnli_matched", Task::Mnli),
        ("mnli-mm", Task::MnliMm),
        ("mnli_mm", Task::MnliMm),
        ("MNLI-mm", Task::MnliMm),
        ("MNLI-MM", Task::MnliMm),
        ("mnli-mismatched", Task::MnliMm),
        ("QNLI", Task::Qnli),
        (" rte ", Task::Rte),
    ];
    for (s, task) in cases {
        assert_eq!(s.parse::<Task>(), Ok(task), "{s:?}");
    }
}

#[test]
fn unknown_task_lists_valid_names() {
    let err = "wnli".parse::<Task>().unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("\"wnli\""), "{msg}");
    for task in Task::ALL {
        assert!(msg.contains(task.name()), "{msg} lacks {}", task.name());
    }
    assert!("".parse::<Task>().is_err());
    assert!("mnli-mmm".parse::<Task>().is_err());
}

#[test]
fn task_properties_match_the_paper_setup() {
    use Task::*;
    assert_eq!(Task::ALL.len(), 9);
    for t in [Cola, Sst2, Mrpc, Qqp, Qnli, Rte] {
        assert_eq!(t.num_labels(), 2, "{t}");
        assert!(!t.is_regression());
    }
    assert_eq!(Stsb.num_labels(), 1);
    assert!(Stsb.is_regression());
    assert_eq!(Mnli.num_labels(), 3);
    assert_eq!(MnliMm.num_labels(), 3);
    for t in [Mrpc, Rte, Cola, Stsb] {
        assert_eq!(t.default_epochs(), 20.0, "{t}");
    }
    for t in [Sst2, Qnli] {
        assert_eq!(t.default_epochs(), 5.0, "{t}");
    }
    for t in [Mnli, MnliMm, Qqp] {
        assert_eq!(t.default_epochs(), 2.0, "{t}");
    }
    assert_eq!(Cola.primary_metric(), "mcc");
    assert_eq!(Stsb.primary_metric(), "pearson");
    for t in [Sst2, Mrpc, Qqp, Mnli, MnliMm, Qnli, Rte] {
        assert_eq!(t.primary_metric(), "accuracy", "{t}");
    }
    assert!(!Cola.has_pair() && !Sst2.has_pair());
    for t in [Mrpc, Stsb, Qqp, Mnli, MnliMm, Qnli, Rte] {
        assert!(t.has_pair(), "{t}");
    }
    let dirs: Vec<_> = Task::ALL.iter().map(|t| t.dir_name()).collect();
    assert_eq!(
        dirs,
        ["CoLA", "SST-2", "MRPC", "STS-B", "QQP", "MNLI", "MNLI", "QNLI", "RTE"]
    );
}

#[test]
fn split_paths_follow_the_glue_layout() {
    let d = Path::new("/data/glue");
    assert_eq!(
        split_path(d, Task::Rte, Split::Train),
        d.join("RTE/train.tsv")
    );
    assert_eq!(
        split_path(d, Task::Sst2, Split::Dev),
        d.join("SST-2/dev.tsv")
    );
    assert_eq!(
        split_path(d, Task::Mnli, Split::Train),
        d.join("MNLI/train.tsv")
    );
    assert_eq!(
        split_path(d, Task::MnliMm, Split::Train),
        d.join("MNLI/train.tsv")
    );
    assert_eq!(
        split_path(d, Task::Mnli, Split::Dev),
        d.join("MNLI/dev_matched.tsv")
    );
    assert_eq!(
        split_path(d, Task::MnliMm, Split::Dev),
        d.join("MNLI/dev_mismatched.tsv")
    );
    assert_eq!(
        split_path(d, Task::Stsb, Split::Dev),
        d.join("STS-B/dev.tsv")
    );
}

// ---------- formats not shipped with the real data ----------

#[test]
fn loads_qqp() {
    let tmp = TempDir::new();
    let contents = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n\
        133273\t213221\t213222\tHow is the life of a math student? Could you describe your own experiences?\tWhich level of prepration is enough for the exam jlpt5?\t0\n\
        402555\t536040\t536041\tHow do I control my horny emotions?\tHow do you control your horniness?\t1\n\
        7\t15\t16\tWhat does \"quote\" mean?\t\t0\n";
    tmp.write("QQP", "train.tsv", contents.as_bytes());
    tmp.write("QQP", "dev.tsv", contents.as_bytes());
    for split in [Split::Train, Split::Dev] {
        let got = load(&tmp.0, Task::Qqp, split).expect("load QQP");
        assert_eq!(
            got,
            vec![
                ex(
                    "How is the life of a math student? Could you describe your own experiences?",
                    Some("Which level of prepration is enough for the exam jlpt5?"),
                    Label::Class(0)
                ),
                ex(
                    "How do I control my horny emotions?",
                    Some("How do you control your horniness?"),
                    Label::Class(1)
                ),
                // Quotes are ordinary characters; an empty question is kept as is.
                ex("What does \"quote\" mean?", Some(""), Label::Class(0)),
            ]
        );
    }
}

const MNLI_TRAIN_HEADER: &str = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label";
const MNLI_DEV_HEADER: &str = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label";

#[test]
fn loads_mnli_train_and_both_dev_sets() {
    let tmp = TempDir::new();
    let train = format!(
        "{MNLI_TRAIN_HEADER}\n\
         0\t31193\t31193n\tgovernment\t( ( Conceptually cream ) skimming )\t( ( Product and ) geography )\t(ROOT (S))\t(ROOT (S))\tConceptually cream skimming has two basic dimensions - product and geography.\tProduct and geography are what make cream skimming work. \tneutral\tneutral\n\
         1\t101457\t101457e\ttelephone\t( you ( know ) )\t( You ( lose ) )\t(ROOT)\t(ROOT)\tyou know during the season and i guess at at your level uh you lose them to the next level if if they decide to recall the the parent team the Braves decide to call to recall a guy from triple A then a double A guy goes up to replace him and a single A guy goes up to replace him\tYou lose the things to the following level if the people recall.\tentailment\tentailment\n\
         2\t134793\t134793c\tfiction\t( a )\t( b )\t(ROOT)\t(ROOT)\tHe said \"no.\tHe agreed.\tcontradiction\tcontradiction\n"
    );
    let dev_m = format!(
        "{MNLI_DEV_HEADER}\n\
         0\t63735\t63735n\tslate\t( a )\t( b )\t(ROOT)\t(ROOT)\tThe new rights are nice enough\tEveryone really likes the newest benefits \tneutral\tentailment\tneutral\tneutral\tneutral\tneutral\n\
         1\t91383\t91383c\tgovernment\t( a )\t( b )\t(ROOT)\t(ROOT)\tThis site includes a list.\tThe Government Executive articles are not on the site.\tcontradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction\n"
    );
    let dev_mm = format!(
        "{MNLI_DEV_HEADER}\n\
         0\t75290\t75290c\tletters\t( a )\t( b )\t(ROOT)\t(ROOT)\tYour contribution helped make it possible.\tYour contributions were of no help.\tcontradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction\n\
         1\t133794\t133794c\tverbatim\t( a )\t( b )\t(ROOT)\t(ROOT)\tThe answer has nothing to do with their cause.\tDictionaries are indeed exercises.\tentailment\tneutral\tentailment\tentailment\t\tentailment\n"
    );
    tmp.write("MNLI", "train.tsv", train.as_bytes());
    tmp.write("MNLI", "dev_matched.tsv", dev_m.as_bytes());
    tmp.write("MNLI", "dev_mismatched.tsv", dev_mm.as_bytes());

    let got = load(&tmp.0, Task::Mnli, Split::Train).expect("MNLI train");
    assert_eq!(got.len(), 3);
    assert_eq!(
        got[0],
        ex(
            "Conceptually cream skimming has two basic dimensions - product and geography.",
            Some("Product and geography are what make cream skimming work. "),
            Label::Class(1)
        )
    );
    assert_eq!(got[1].label, Label::Class(0));
    assert_eq!(
        got[1].text_b.as_deref(),
        Some("You lose the things to the following level if the people recall.")
    );
    assert_eq!(
        got[2],
        ex("He said \"no.", Some("He agreed."), Label::Class(2))
    );
    // Both MNLI tasks train on the same file.
    assert_eq!(
        load(&tmp.0, Task::MnliMm, Split::Train).expect("MNLI-mm train"),
        got
    );

    let m = load(&tmp.0, Task::Mnli, Split::Dev).expect("MNLI dev_matched");
    assert_eq!(
        m,
        vec![
            ex(
                "The new rights are nice enough",
                Some("Everyone really likes the newest benefits "),
                Label::Class(1)
            ),
            ex(
                "This site includes a list.",
                Some("The Government Executive articles are not on the site."),
                Label::Class(2)
            ),
        ]
    );
    let mm = load(&tmp.0, Task::MnliMm, Split::Dev).expect("MNLI dev_mismatched");
    assert_eq!(mm.len(), 2);
    assert_eq!(mm[0].text_a, "Your contribution helped make it possible.");
    assert_eq!(mm[0].label, Label::Class(2));
    // The gold label is the last column even when an annotator label is empty.
    assert_eq!(mm[1].label, Label::Class(0));
}

#[test]
fn mnli_falls_back_to_positions_without_header_names() {
    let header = "a\tb\tc\td\te\tf\tg\th\ti\tj\tk\tl";
    let body = "0\t1\t2\tgenre\t-\t-\t-\t-\tpremise\thypothesis\tneutral\tneutral\n";
    let tmp = TempDir::new();
    let p = tmp.write("MNLI", "train.tsv", format!("{header}\n{body}").as_bytes());
    let got = load_file(&p, Task::Mnli).expect("load");
    assert_eq!(
        got,
        vec![ex("premise", Some("hypothesis"), Label::Class(1))]
    );
}

#[test]
fn mnli_short_row_and_bad_label_are_errors() {
    let short = format!("{MNLI_TRAIN_HEADER}\n0\t1\t2\tgenre\t-\t-\t-\t-\tpremise\n");
    let (msg, err) = error_of(Task::Mnli, "train.tsv", &short);
    assert!(
        matches!(
            err,
            GlueError::MissingColumn {
                line: 2,
                column: 9,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        msg.contains("MNLI/train.tsv:2") && msg.contains("sentence2"),
        "{msg}"
    );

    // Premise and hypothesis but no label column after them.
    let no_label =
        format!("{MNLI_TRAIN_HEADER}\n0\t1\t2\tgenre\t-\t-\t-\t-\tpremise\thypothesis\n");
    let (msg, err) = error_of(Task::Mnli, "train.tsv", &no_label);
    assert!(
        matches!(
            err,
            GlueError::MissingColumn {
                line: 2,
                column: 10,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(msg.contains("gold_label"), "{msg}");

    let bad = format!(
        "{MNLI_DEV_HEADER}\n0\t1\t2\tg\t-\t-\t-\t-\tp\th\tneutral\tneutral\tneutral\tneutral\tneutral\tneutral\n\
         1\t1\t2\tg\t-\t-\t-\t-\tp\th\tneutral\t\t\t\t\t-\n"
    );
    let (msg, err) = error_of(Task::Mnli, "dev_matched.tsv", &bad);
    assert!(
        matches!(
            err,
            GlueError::BadLabel {
                line: 3,
                column: 15,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        msg.contains("dev_matched.tsv:3") && msg.contains("\"-\""),
        "{msg}"
    );
}

#[test]
fn loads_qnli_train() {
    let tmp = TempDir::new();
    tmp.write(
        "QNLI",
        "train.tsv",
        b"index\tquestion\tsentence\tlabel\n\
          0\tWhen did the third Digimon series begin?\tUnlike the two seasons before it, Digimon Tamers takes a darker approach.\tnot_entailment\n\
          1\tWhich missile batteries often have individual launchers several kilometres from one another?\tWhen MANPADS is operated by specialists, batteries may have several dozen teams.\tentailment\n",
    );
    let got = load(&tmp.0, Task::Qnli, Split::Train).expect("QNLI train");
    assert_eq!(
        got,
        vec![
            ex(
                "When did the third Digimon series begin?",
                Some("Unlike the two seasons before it, Digimon Tamers takes a darker approach."),
                Label::Class(1)
            ),
            ex(
                "Which missile batteries often have individual launchers several kilometres from one another?",
                Some("When MANPADS is operated by specialists, batteries may have several dozen teams."),
                Label::Class(0)
            ),
        ]
    );
}

#[test]
fn columns_are_found_by_header_name() {
    // A reordered RTE file: the header names win over the standard positions.
    let tmp = TempDir::new();
    let p = tmp.write(
        "RTE",
        "dev.tsv",
        b"label\tsentence2\tindex\tsentence1\nentailment\thyp\t0\tprem\n",
    );
    assert_eq!(
        load_file(&p, Task::Rte).expect("load"),
        vec![ex("prem", Some("hyp"), Label::Class(0))]
    );
}

// ---------- encodings and line ends ----------

#[test]
fn bom_crlf_and_trailing_empty_lines_just_work() {
    let tmp = TempDir::new();
    let p = tmp.write(
        "MRPC",
        "dev.tsv",
        b"\xEF\xBB\xBFQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\n\
          1\t1\t2\tHe said \" yes .\tShe said \" no \" .\r\n\
          0\t3\t4\tA .\tB .\r\n\r\n\n",
    );
    let got = load_file(&p, Task::Mrpc).expect("load MRPC");
    assert_eq!(
        got,
        vec![
            ex(
                "He said \" yes .",
                Some("She said \" no \" ."),
                Label::Class(1)
            ),
            ex("A .", Some("B ."), Label::Class(0)),
        ]
    );
    // A BOM on a headerless file must not leak into the first field either.
    let p = tmp.write(
        "CoLA",
        "train.tsv",
        b"\xEF\xBB\xBFgj04\t1\t\tA sentence.\r\ngj04\t0\t*\tSentence a.",
    );
    let got = load_file(&p, Task::Cola).expect("load CoLA");
    assert_eq!(
        got,
        vec![
            ex("A sentence.", None, Label::Class(1)),
            ex("Sentence a.", None, Label::Class(0)),
        ]
    );
}

#[test]
fn sst2_keeps_text_verbatim() {
    let tmp = TempDir::new();
    let p = tmp.write(
        "SST-2",
        "dev.tsv",
        b"sentence\tlabel\nit 's a \"charming\" journey . \t1\n",
    );
    assert_eq!(
        load_file(&p, Task::Sst2).expect("load"),
        vec![ex("it 's a \"charming\" journey . ", None, Label::Class(1))]
    );
}

// ---------- malformed files ----------

#[test]
fn missing_column_names_file_line_and_column() {
    let (msg, err) = error_of(
        Task::Rte,
        "train.tsv",
        "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\n",
    );
    assert!(
        matches!(
            err,
            GlueError::MissingColumn {
                line: 3,
                column: 3,
                found: 3,
                expected: 4,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(msg.contains("RTE/train.tsv:3:"), "{msg}");
    assert!(msg.contains("missing column 3 (label)"), "{msg}");

    let (msg, err) = error_of(Task::Cola, "dev.tsv", "gj04\t1\t\tFine.\ngj04\t1\n");
    assert!(
        matches!(
            err,
            GlueError::MissingColumn {
                line: 2,
                column: 3,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        msg.contains("CoLA/dev.tsv:2:") && msg.contains("sentence"),
        "{msg}"
    );
}

#[test]
fn extra_tab_is_an_error_not_a_shift() {
    // The second sentence contains a stray tab, which would shift the label otherwise.
    let (msg, err) = error_of(
        Task::Rte,
        "dev.tsv",
        "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\tpart two\tnot_entailment\n",
    );
    assert!(
        matches!(
            err,
            GlueError::FieldCount {
                line: 3,
                found: 5,
                expected: 4,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(msg.contains("RTE/dev.tsv:3:"), "{msg}");

    let (msg, err) = error_of(Task::Sst2, "train.tsv", "sentence\tlabel\ngood\tstuff\t1\n");
    assert!(
        matches!(err, GlueError::FieldCount { line: 2, .. }),
        "{err:?}"
    );
    assert!(msg.contains("SST-2/train.tsv:2:"), "{msg}");

    let (_, err) = error_of(
        Task::Cola,
        "train.tsv",
        "gj04\t1\t\tFine.\ngj04\t1\t\tA\tB.\n",
    );
    assert!(
        matches!(
            err,
            GlueError::FieldCount {
                line: 2,
                found: 5,
                expected: 4,
                ..
            }
        ),
        "{err:?}"
    );

    // STS-B: a row one field short ends before the score column.
    let header =
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore";
    let (msg, err) = error_of(
        Task::Stsb,
        "train.tsv",
        &format!("{header}\n0\tg\tf\t2012\t1\tnone\tnone\tA.\tB.\n"),
    );
    assert!(
        matches!(
            err,
            GlueError::MissingColumn {
                line: 2,
                column: 9,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(msg.contains("score"), "{msg}");
}

#[test]
fn bad_labels_are_quoted() {
    let (msg, err) = error_of(
        Task::Sst2,
        "dev.tsv",
        "sentence\tlabel\ngood\t1\nbad\tpositive\n",
    );
    assert!(
        matches!(
            err,
            GlueError::BadLabel {
                line: 3,
                column: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        msg.contains("SST-2/dev.tsv:3:") && msg.contains("\"positive\""),
        "{msg}"
    );

    let (msg, _) = error_of(Task::Cola, "train.tsv", "gj04\t2\t\tOdd.\n");
    assert!(
        msg.contains("CoLA/train.tsv:1:") && msg.contains("\"2\""),
        "{msg}"
    );

    // RTE labels are names; a numeric label is rejected rather than guessed.
    let (msg, _) = error_of(
        Task::Rte,
        "dev.tsv",
        "index\tsentence1\tsentence2\tlabel\n0\ta\tb\t1\n",
    );
    assert!(
        msg.contains("RTE/dev.tsv:2:") && msg.contains("\"1\"") && msg.contains("not_entailment"),
        "{msg}"
    );

    let (msg, _) = error_of(
        Task::Qqp,
        "dev.tsv",
        "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n1\t2\t3\tq1\tq2\tyes\n",
    );
    assert!(
        msg.contains("QQP/dev.tsv:2:") && msg.contains("\"yes\""),
        "{msg}"
    );
}

#[test]
fn stsb_scores_must_be_numbers_in_range() {
    let header =
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore";
    let row = |score: &str| format!("0\tg\tf\t2012\t1\tnone\tnone\tA.\tB.\t{score}");
    let tmp = TempDir::new();
    let p = tmp.write(
        "STS-B",
        "dev.tsv",
        format!("{header}\n{}\n{}\n", row("5.000"), row("0.25")).as_bytes(),
    );
    let got = load_file(&p, Task::Stsb).expect("load");
    assert_eq!(got[0], ex("A.", Some("B."), Label::Score(5.0)));
    assert_eq!(got[1].label, Label::Score(0.25));

    let (msg, err) = error_of(
        Task::Stsb,
        "dev.tsv",
        &format!("{header}\n{}\n{}\n", row("1.0"), row("n/a")),
    );
    assert!(
        matches!(
            err,
            GlueError::BadScore {
                line: 3,
                column: 9,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        msg.contains("STS-B/dev.tsv:3:") && msg.contains("\"n/a\""),
        "{msg}"
    );

    let (msg, _) = error_of(
        Task::Stsb,
        "dev.tsv",
        &format!("{header}\n{}\n", row("5.5")),
    );
    assert!(msg.contains("\"5.5\"") && msg.contains("0..=5"), "{msg}");
    let (msg, _) = error_of(
        Task::Stsb,
        "dev.tsv",
        &format!("{header}\n{}\n", row("NaN")),
    );
    assert!(msg.contains("\"NaN\""), "{msg}");
}

#[test]
fn empty_and_header_only_files_are_errors() {
    for contents in ["", "\n", "\r\n\r\n"] {
        let (msg, err) = error_of(Task::Rte, "train.tsv", contents);
        assert!(
            matches!(err, GlueError::EmptyFile { .. }),
            "{contents:?}: {err:?}"
        );
        assert!(
            msg.contains("RTE/train.tsv") && msg.contains("empty"),
            "{msg}"
        );
    }
    let (_, err) = error_of(Task::Cola, "train.tsv", "");
    assert!(matches!(err, GlueError::EmptyFile { .. }), "{err:?}");
    // A BOM alone is still empty.
    let tmp = TempDir::new();
    let p = tmp.write("MRPC", "train.tsv", b"\xEF\xBB\xBF\n");
    assert!(matches!(
        load_file(&p, Task::Mrpc),
        Err(GlueError::EmptyFile { .. })
    ));

    let (msg, err) = error_of(Task::Rte, "dev.tsv", "index\tsentence1\tsentence2\tlabel\n");
    assert!(matches!(err, GlueError::NoExamples { .. }), "{err:?}");
    assert!(
        msg.contains("RTE/dev.tsv") && msg.contains("no examples"),
        "{msg}"
    );
}

#[test]
fn empty_line_between_rows_is_an_error() {
    let (msg, err) = error_of(Task::Sst2, "dev.tsv", "sentence\tlabel\na\t1\n\nb\t0\n");
    assert!(
        matches!(err, GlueError::EmptyLine { line: 3, .. }),
        "{err:?}"
    );
    assert!(msg.contains("SST-2/dev.tsv:3:"), "{msg}");
}

#[test]
fn invalid_utf8_names_the_line() {
    let tmp = TempDir::new();
    let p = tmp.write(
        "SST-2",
        "dev.tsv",
        b"sentence\tlabel\nok\t1\nbad \xFF byte\t0\n",
    );
    let err = load_file(&p, Task::Sst2).unwrap_err();
    assert!(matches!(err, GlueError::NotUtf8 { line: 3, .. }), "{err:?}");
    assert!(err.to_string().contains("SST-2/dev.tsv:3:"), "{err}");
}

#[test]
fn missing_file_hints_at_the_layout() {
    let tmp = TempDir::new();
    let err = load(&tmp.0, Task::Qnli, Split::Train).unwrap_err();
    assert!(matches!(err, GlueError::MissingFile { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("QNLI/train.tsv"), "{msg}");
    assert!(msg.contains("<data>/<TASK>/train.tsv"), "{msg}");
}
