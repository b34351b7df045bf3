//! Padding fraction of one epoch of GLUE training batches, plain shuffle vs length bucketing.
//!
//!     cargo run --release -p petnas-train --example padding -- DATA_DIR TASK MODEL_DIR [BATCH] [MAX_LEN]
//!
//! Prints one line per bucket window (1 = plain shuffle) with the padded share of the token slots,
//! averaged over 5 shuffling seeds, as the trainer batches them (`batch::epoch_batches`).
use std::path::Path;

use petnas_core::inventory::Family;
use petnas_core::rng::Rng;
use petnas_train::batch::{epoch_batches, padding_fraction};
use petnas_train::glue::{load, Split, Task};
use petnas_train::tokenize::TextTokenizer;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 4 {
        anyhow::bail!("usage: padding DATA_DIR TASK MODEL_DIR [BATCH] [MAX_LEN]");
    }
    let task: Task = a[2].parse()?;
    let batch: usize = a.get(4).map(|s| s.parse()).transpose()?.unwrap_or(16);
    let max_len: usize = a.get(5).map(|s| s.parse()).transpose()?.unwrap_or(128);
    let ex = load(Path::new(&a[1]), task, Split::Train)?;
    let tok = TextTokenizer::from_file(
        &Path::new(&a[3]).join("tokenizer.json"),
        Family::Bert,
        max_len,
    )?;
    let lengths: Vec<usize> = tok.encode_all(&ex)?.iter().map(|e| e.ids.len()).collect();
    let mean = lengths.iter().sum::<usize>() as f64 / lengths.len() as f64;
    println!(
        "{task} train: {} examples, mean length {mean:.1} tokens, batch {batch}, max_len {max_len}",
        lengths.len()
    );
    for bucket in [1usize, 10, 50, 100] {
        let fr: f64 = (0..5u64)
            .map(|s| {
                padding_fraction(
                    &lengths,
                    &epoch_batches(&lengths, batch, &mut Rng::new(s), bucket),
                )
            })
            .sum::<f64>()
            / 5.0;
        println!("bucket {bucket:>3}: padding fraction {fr:.3}");
    }
    Ok(())
}
