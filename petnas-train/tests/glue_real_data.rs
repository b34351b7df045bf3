//! The GLUE reader on the real files in `../shared/data/glue` (`$PETNAS_GLUE` to point
//! elsewhere): row counts from the GLUE README, spot checks of known rows, and the loader against
//! a naive split of the raw text.

use std::path::{Path, PathBuf};

use petnas_train::glue::{load_file, split_path, Example, Label, Split, Task};

fn ex(a: &str, b: Option<&str>, label: Label) -> Example {
    Example {
        text_a: a.to_string(),
        text_b: b.map(str::to_string),
        label,
    }
}

/// The shared GLUE directory: `$PETNAS_GLUE`, else `<workspace>/../shared/data/glue`.
/// Missing data fails the test unless `PETNAS_ALLOW_MISSING_DATA=1`.
fn real_data_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("PETNAS_GLUE") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/glue"),
    };
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var("PETNAS_ALLOW_MISSING_DATA").as_deref() == Ok("1") {
        eprintln!("skipping: GLUE data not found at {}", dir.display());
        return None;
    }
    panic!(
        "GLUE data not found at {}; set PETNAS_GLUE to the glue_data directory, \
         or PETNAS_ALLOW_MISSING_DATA=1 to skip",
        dir.display()
    );
}

fn class_counts(examples: &[Example], n: usize) -> Vec<usize> {
    let mut counts = vec![0; n];
    for e in examples {
        match e.label {
            Label::Class(c) => counts[c] += 1,
            Label::Score(_) => panic!("unexpected score label"),
        }
    }
    counts
}

#[test]
fn real_files_have_the_readme_row_counts() {
    let Some(dir) = real_data_dir() else { return };
    let cases = [
        (Task::Cola, Split::Train, 8551),
        (Task::Cola, Split::Dev, 1043),
        (Task::Sst2, Split::Train, 67349),
        (Task::Sst2, Split::Dev, 872),
        (Task::Mrpc, Split::Train, 3668),
        (Task::Mrpc, Split::Dev, 408),
        (Task::Stsb, Split::Train, 5749),
        (Task::Stsb, Split::Dev, 1500),
        (Task::Rte, Split::Train, 2490),
        (Task::Rte, Split::Dev, 277),
        (Task::Qnli, Split::Dev, 5463),
    ];
    for (task, split, rows) in cases {
        let examples = petnas_train::glue::load(&dir, task, split)
            .unwrap_or_else(|e| panic!("{task} {split}: {e}"));
        assert_eq!(examples.len(), rows, "{task} {split}");
        for e in &examples {
            assert_eq!(e.text_b.is_some(), task.has_pair(), "{task} {split}");
            match e.label {
                Label::Class(c) => assert!(c < task.num_labels(), "{task} {split}"),
                Label::Score(s) => {
                    assert!(
                        task.is_regression() && (0.0..=5.0).contains(&s),
                        "{task} {split}"
                    )
                }
            }
        }
    }
}

#[test]
fn real_files_spot_checks() {
    let Some(dir) = real_data_dir() else { return };
    let load = |task, split| {
        petnas_train::glue::load(&dir, task, split)
            .unwrap_or_else(|e| panic!("{task} {split}: {e}"))
    };

    let cola = load(Task::Cola, Split::Train);
    assert_eq!(
        cola[0],
        ex(
            "Our friends won't buy this analysis, let alone the next one we propose.",
            None,
            Label::Class(1)
        )
    );
    assert_eq!(class_counts(&cola, 2), [2528, 6023]);
    // CoLA dev has no final newline.
    let cola_dev = load(Task::Cola, Split::Dev);
    assert_eq!(
        cola_dev.last().map(|e| e.text_a.as_str()),
        Some("John talked to Bill about himself.")
    );
    assert_eq!(class_counts(&cola_dev, 2), [322, 721]);

    let sst = load(Task::Sst2, Split::Train);
    assert_eq!(
        sst[0],
        ex(
            "hide new secretions from the parental units ",
            None,
            Label::Class(0)
        )
    );
    assert_eq!(class_counts(&sst, 2), [29780, 37569]);

    // MRPC starts with a BOM and has quotes in its texts.
    let mrpc = load(Task::Mrpc, Split::Train);
    assert_eq!(
        mrpc[0],
        ex(
            "Amrozi accused his brother , whom he called \" the witness \" , of deliberately distorting his evidence .",
            Some("Referring to him as only \" the witness \" , Amrozi accused his brother of deliberately distorting his evidence ."),
            Label::Class(1)
        )
    );
    assert_eq!(class_counts(&mrpc, 2), [1194, 2474]);

    let stsb = load(Task::Stsb, Split::Train);
    assert_eq!(
        stsb[0],
        ex(
            "A plane is taking off.",
            Some("An air plane is taking off."),
            Label::Score(5.0)
        )
    );
    assert_eq!(stsb[1].label, Label::Score(3.8));
    let dev_sum: f64 = load(Task::Stsb, Split::Dev)
        .iter()
        .map(|e| match e.label {
            Label::Score(s) => f64::from(s),
            Label::Class(_) => panic!("class label in STS-B"),
        })
        .sum();
    assert!((dev_sum - 3545.8613).abs() < 1e-2, "{dev_sum}");

    let rte = load(Task::Rte, Split::Train);
    assert_eq!(
        rte[0],
        ex(
            "No Weapons of Mass Destruction Found in Iraq Yet.",
            Some("Weapons of Mass Destruction Found in Iraq."),
            Label::Class(1)
        )
    );
    assert_eq!(class_counts(&rte, 2), [1249, 1241]);

    let qnli = load(Task::Qnli, Split::Dev);
    assert_eq!(
        qnli[0],
        ex(
            "What came into force after the new constitution was herald?",
            Some("As of that day, the new constitution heralding the Second Republic came into force."),
            Label::Class(0)
        )
    );
    assert_eq!(class_counts(&qnli, 2), [2702, 2761]);
}

#[test]
fn real_files_match_a_naive_split_of_the_raw_text() {
    // Independent of the loader's column logic: split line 2 of each headed file by hand.
    let Some(dir) = real_data_dir() else { return };
    let cases = [
        (Task::Sst2, 0, None),
        (Task::Mrpc, 3, Some(4)),
        (Task::Stsb, 7, Some(8)),
        (Task::Rte, 1, Some(2)),
        (Task::Qnli, 1, Some(2)),
    ];
    for (task, a, b) in cases {
        let path = split_path(&dir, task, Split::Dev);
        let raw = std::fs::read_to_string(&path).expect("read raw");
        let line = raw.lines().nth(1).expect("a second line");
        let fields: Vec<&str> = line.split('\t').collect();
        let first = &load_file(&path, task).expect("load")[0];
        assert_eq!(first.text_a, fields[a], "{task}");
        assert_eq!(first.text_b.as_deref(), b.map(|b| fields[b]), "{task}");
    }
}
