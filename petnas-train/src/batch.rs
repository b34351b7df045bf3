//! Batches: dynamic padding to the longest sequence of the batch, family-specific position ids,
//! seeded shuffling and optional length bucketing.

use candle_core::{Device, Tensor};
use petnas_core::inventory::Family;
use petnas_core::rng::Rng;

use crate::model::Batch;
use crate::tokenize::Encoded;

/// Pads `items` to their longest length and builds the model's input tensors.
pub fn make_batch(
    items: &[&Encoded],
    family: Family,
    pad_id: u32,
    device: &Device,
) -> candle_core::Result<Batch> {
    let b = items.len();
    let l = items.iter().map(|e| e.ids.len()).max().unwrap_or(1).max(1);
    let mut ids = vec![pad_id; b * l];
    let mut types = vec![0u32; b * l];
    let mut pos = vec![0u32; b * l];
    let mut mask = vec![0f32; b * l];
    for (r, e) in items.iter().enumerate() {
        for j in 0..l {
            let k = r * l + j;
            let real = j < e.ids.len();
            if real {
                ids[k] = e.ids[j];
                types[k] = e.type_ids[j];
                mask[k] = 1.0;
            }
            pos[k] = match family {
                Family::Bert => j as u32,
                // transformers' create_position_ids_from_input_ids: pad + cumsum(mask) on real tokens.
                Family::Roberta => {
                    if real {
                        pad_id + 1 + j as u32
                    } else {
                        pad_id
                    }
                }
            };
        }
    }
    Ok(Batch {
        input_ids: Tensor::from_vec(ids, (b, l), device)?,
        type_ids: Tensor::from_vec(types, (b, l), device)?,
        position_ids: Tensor::from_vec(pos, (b, l), device)?,
        attention_mask: Tensor::from_vec(mask, (b, l), device)?,
    })
}

/// The order of one epoch: a seeded shuffle, cut into batches. With `bucket` > 1, each window of
/// `bucket` batches is sorted by length before cutting, so padding stays small while the batch
/// composition stays random.
pub fn epoch_batches(
    lengths: &[usize],
    batch: usize,
    rng: &mut Rng,
    bucket: usize,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    rng.shuffle(&mut order);
    if bucket > 1 {
        for w in order.chunks_mut(batch * bucket) {
            w.sort_by_key(|&i| lengths[i]);
        }
    }
    let mut batches: Vec<Vec<usize>> = order.chunks(batch).map(|c| c.to_vec()).collect();
    if bucket > 1 {
        // Sorting made batch lengths monotone within a window; shuffle batch order back.
        rng.shuffle(&mut batches);
    }
    batches
}

/// Fraction of padded positions when `lengths` are batched as `batches` (for the bench / logs).
pub fn padding_fraction(lengths: &[usize], batches: &[Vec<usize>]) -> f64 {
    let (mut pad, mut total) = (0usize, 0usize);
    for b in batches {
        let l = b.iter().map(|&i| lengths[i]).max().unwrap_or(0);
        total += l * b.len();
        pad += b.iter().map(|&i| l - lengths[i]).sum::<usize>();
    }
    if total == 0 {
        0.0
    } else {
        pad as f64 / total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roberta_positions_skip_padding_index() {
        let a = Encoded {
            ids: vec![0, 5, 2],
            type_ids: vec![0; 3],
        };
        let b = Encoded {
            ids: vec![0, 2],
            type_ids: vec![0; 2],
        };
        let batch = make_batch(&[&a, &b], Family::Roberta, 1, &Device::Cpu).unwrap();
        let pos: Vec<Vec<u32>> = batch.position_ids.to_vec2().unwrap();
        assert_eq!(pos, vec![vec![2, 3, 4], vec![2, 3, 1]]);
        let ids: Vec<Vec<u32>> = batch.input_ids.to_vec2().unwrap();
        assert_eq!(ids[1], vec![0, 2, 1]);
        let m: Vec<Vec<f32>> = batch.attention_mask.to_vec2().unwrap();
        assert_eq!(m[1], vec![1.0, 1.0, 0.0]);
    }

    #[test]
    fn bert_positions_count_from_zero() {
        let a = Encoded {
            ids: vec![101, 7, 102],
            type_ids: vec![0, 0, 0],
        };
        let batch = make_batch(&[&a], Family::Bert, 0, &Device::Cpu).unwrap();
        let pos: Vec<Vec<u32>> = batch.position_ids.to_vec2().unwrap();
        assert_eq!(pos, vec![vec![0, 1, 2]]);
    }

    #[test]
    fn bucketing_keeps_every_example_once_and_cuts_padding() {
        let mut r = Rng::new(3);
        let lengths: Vec<usize> = (0..1000)
            .map(|_| 5 + (r.next_u64() % 120) as usize)
            .collect();
        let plain = epoch_batches(&lengths, 16, &mut Rng::new(1), 1);
        let bucketed = epoch_batches(&lengths, 16, &mut Rng::new(1), 50);
        let mut seen: Vec<usize> = bucketed.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
        assert!(padding_fraction(&lengths, &bucketed) < padding_fraction(&lengths, &plain) / 3.0);
        assert_eq!(
            epoch_batches(&lengths, 16, &mut Rng::new(1), 50),
            bucketed,
            "seeded"
        );
    }
}
