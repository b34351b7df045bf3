//! Pruning a PET architecture to a parameter budget.
//!
//! Lawton et al. (2023), Section 3.2: units are removed in increasing order of the criterion
//! until the architecture's PET parameter count is within the budget. Structured units are a
//! whole bias vector (cost: its kept entries) or one LoRA rank component (column k of U and V;
//! cost: their kept entries), scored by the sum of their entries' scores; unstructured units are
//! single entries. Section 4.3 prunes iteratively for very small budgets
//! ([`iterative_budgets`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::arch::{Architecture, BiasArch, LoraKeep, Mask, PruneMode};
use crate::inventory::{bias_delta_name, lora_u_name, lora_v_name};
use crate::CoreError;

/// How a structured LoRA rank component is scored.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum RankGroup {
    /// Sum over column k of U and column k of V (both are removed together).
    // `rename_all = "snake_case"` would spell this `u_v`; the CLI and configs say `uv`.
    #[default]
    #[serde(rename = "uv", alias = "u_v")]
    UV,
    /// Sum over column k of U only (the paper's literal wording); V's column is still removed
    /// with it and still counted in the cost.
    UOnly,
}

const T_BIAS: u8 = 0;
const T_U: u8 = 1;
const T_V: u8 = 2;

struct Unit {
    score: f64,
    module: usize,
    tensor: u8,
    index: usize,
    cost: usize,
}

struct Work {
    bias: Option<Mask>,
    lora: Option<(Mask, Mask, usize)>,
}

fn get_scores(
    scores: &BTreeMap<String, Vec<f32>>,
    name: String,
    len: usize,
) -> Result<&[f32], CoreError> {
    let s = scores
        .get(&name)
        .ok_or_else(|| CoreError::MissingScore { name: name.clone() })?;
    if s.len() != len {
        return Err(CoreError::LengthMismatch {
            name: format!("score tensor {name}"),
            expected: len,
            found: s.len(),
        });
    }
    if let Some(index) = s.iter().position(|x| x.is_nan()) {
        return Err(CoreError::NanScore { name, index });
    }
    Ok(s)
}

/// Prunes `maximal` (or an already pruned architecture, for iterative pruning) to at most
/// `budget` PET parameters, removing the lowest-scored units first. Ties go to the earlier
/// module in inventory order, then bias before U before V, then the lower index. A budget at or
/// above the current count keeps everything. `scores` are keyed by PET tensor name at full
/// max-rank shape; a missing tensor is an error naming it.
pub fn prune(
    maximal: &Architecture,
    scores: &BTreeMap<String, Vec<f32>>,
    mode: PruneMode,
    budget: usize,
    group: RankGroup,
) -> Result<Architecture, CoreError> {
    maximal.validate()?;
    let mut work: Vec<Work> = maximal
        .modules
        .iter()
        .map(|m| Work {
            bias: m.bias_mask(),
            lora: m
                .lora_masks()
                .map(|(u, v)| (u, v, m.lora.as_ref().map_or(0, |l| l.max_rank))),
        })
        .collect();

    let mut units: Vec<Unit> = Vec::new();
    for (mi, (m, w)) in maximal.modules.iter().zip(&work).enumerate() {
        if let Some(b) = &w.bias {
            let s = get_scores(scores, bias_delta_name(&m.path), m.out_dim)?;
            match mode {
                PruneMode::Structured => {
                    let cost = b.count_ones();
                    if cost > 0 {
                        let score = b.ones().map(|i| s[i] as f64).sum();
                        units.push(Unit {
                            score,
                            module: mi,
                            tensor: T_BIAS,
                            index: 0,
                            cost,
                        });
                    }
                }
                PruneMode::Unstructured => units.extend(b.ones().map(|i| Unit {
                    score: s[i] as f64,
                    module: mi,
                    tensor: T_BIAS,
                    index: i,
                    cost: 1,
                })),
            }
        }
        if let Some((u, v, r)) = &w.lora {
            let r = *r;
            let su = get_scores(scores, lora_u_name(&m.path), m.in_dim * r)?;
            let need_v = !(mode == PruneMode::Structured && group == RankGroup::UOnly);
            let sv = if need_v {
                get_scores(scores, lora_v_name(&m.path), m.out_dim * r)?
            } else {
                &[][..]
            };
            match mode {
                PruneMode::Structured => {
                    for k in 0..r {
                        let ui: Vec<usize> = (0..m.in_dim)
                            .map(|i| i * r + k)
                            .filter(|&x| u.get(x))
                            .collect();
                        let vi: Vec<usize> = (0..m.out_dim)
                            .map(|j| j * r + k)
                            .filter(|&x| v.get(x))
                            .collect();
                        let cost = ui.len() + vi.len();
                        if cost == 0 {
                            continue;
                        }
                        let mut score: f64 = ui.iter().map(|&x| su[x] as f64).sum();
                        if group == RankGroup::UV {
                            score += vi.iter().map(|&x| sv[x] as f64).sum::<f64>();
                        }
                        units.push(Unit {
                            score,
                            module: mi,
                            tensor: T_U,
                            index: k,
                            cost,
                        });
                    }
                }
                PruneMode::Unstructured => {
                    units.extend(u.ones().map(|x| Unit {
                        score: su[x] as f64,
                        module: mi,
                        tensor: T_U,
                        index: x,
                        cost: 1,
                    }));
                    units.extend(v.ones().map(|x| Unit {
                        score: sv[x] as f64,
                        module: mi,
                        tensor: T_V,
                        index: x,
                        cost: 1,
                    }));
                }
            }
        }
    }

    units.sort_by(|a, b| {
        a.score
            .total_cmp(&b.score)
            .then(a.module.cmp(&b.module))
            .then(a.tensor.cmp(&b.tensor))
            .then(a.index.cmp(&b.index))
    });

    let mut count = maximal.pet_params();
    // Unstructured LoRA: an entry of U's column k acts only through V's column k (ΔW = U·Vᵀ), so
    // once either column is empty the other's entries do nothing while still counting toward the
    // budget. They are removed for free as soon as that happens (and up front, for an already
    // pruned architecture), before any entry that does something.
    let mut alive: Vec<Option<(Vec<usize>, Vec<usize>)>> = Vec::new();
    if mode == PruneMode::Unstructured {
        for (mi, m) in maximal.modules.iter().enumerate() {
            let a: Option<(Vec<usize>, Vec<usize>)> = work[mi].lora.as_ref().map(|(u, v, r)| {
                let col = |mask: &Mask, rows: usize, k: usize| {
                    (0..rows).filter(|&i| mask.get(i * r + k)).count()
                };
                (
                    (0..*r).map(|k| col(u, m.in_dim, k)).collect(),
                    (0..*r).map(|k| col(v, m.out_dim, k)).collect(),
                )
            });
            let r = a.as_ref().map_or(0, |(u, _)| u.len());
            alive.push(a);
            for k in 0..r {
                let mut cols = alive_at(&mut alive, mi);
                if cols.0[k] == 0 || cols.1[k] == 0 {
                    count -= clear_column(&mut work[mi], &mut cols, k);
                }
            }
        }
    }
    for unit in &units {
        if count <= budget {
            break;
        }
        if mode == PruneMode::Unstructured && unit.tensor != T_BIAS {
            let Some((u, v, r)) = &mut work[unit.module].lora else {
                continue;
            };
            let r = *r;
            let mask = if unit.tensor == T_U { u } else { v };
            if !mask.get(unit.index) {
                continue; // removed for free already
            }
            mask.set(unit.index, false);
            count -= 1;
            let k = unit.index % r;
            let mut cols = alive_at(&mut alive, unit.module);
            let left = if unit.tensor == T_U {
                &mut cols.0[k]
            } else {
                &mut cols.1[k]
            };
            *left -= 1;
            if *left == 0 {
                count -= clear_column(&mut work[unit.module], &mut cols, k);
            }
            continue;
        }
        let w = &mut work[unit.module];
        match (mode, unit.tensor) {
            (PruneMode::Structured, T_BIAS) => {
                if let Some(b) = &mut w.bias {
                    *b = Mask::new_empty(b.len());
                }
            }
            (PruneMode::Structured, _) => {
                if let Some((u, v, r)) = &mut w.lora {
                    let r = *r;
                    for x in (unit.index..u.len()).step_by(r) {
                        u.set(x, false);
                    }
                    for x in (unit.index..v.len()).step_by(r) {
                        v.set(x, false);
                    }
                }
            }
            (PruneMode::Unstructured, T_BIAS) => {
                if let Some(b) = &mut w.bias {
                    b.set(unit.index, false);
                }
            }
            (PruneMode::Unstructured, t) => {
                if let Some((u, v, _)) = &mut w.lora {
                    if t == T_U { u } else { v }.set(unit.index, false);
                }
            }
        }
        count -= unit.cost;
    }

    let mut out = maximal.clone();
    out.mode = Some(mode);
    out.budget = Some(budget);
    for (m, w) in out.modules.iter_mut().zip(work) {
        if let (Some(b), Some(mask)) = (&mut m.bias, w.bias) {
            *b = if mask.all() {
                BiasArch::Full
            } else {
                BiasArch::Masked(mask)
            };
        }
        if let (Some(l), Some((u, v, r))) = (&mut m.lora, w.lora) {
            let was_ranks = matches!(l.keep, LoraKeep::Ranks(_));
            // Column k of U and V entirely kept or entirely removed, for every k.
            let col_state = |k: usize| -> Option<bool> {
                let mut bits = (0..m.in_dim)
                    .map(|i| u.get(i * r + k))
                    .chain((0..m.out_dim).map(|j| v.get(j * r + k)));
                let first = bits.next().unwrap_or(false);
                bits.all(|b| b == first).then_some(first)
            };
            let states: Vec<Option<bool>> = (0..r).map(col_state).collect();
            l.keep = if was_ranks && states.iter().all(Option::is_some) {
                LoraKeep::Ranks((0..r).filter(|&k| states[k] == Some(true)).collect())
            } else {
                LoraKeep::Entries { u, v }
            };
        }
    }
    debug_assert_eq!(out.pet_params(), count);
    Ok(out)
}

/// Criterion scores of a training of the pruned `arch`, laid out at `arch`'s maximal shapes, as
/// [`prune`] wants them for the next round of iterative pruning: compacted kept ranks are put back
/// at their column, and tensors the pruned model does not have (a bias vector or LoRA module
/// pruned away) score 0. Those units are already off in `arch`'s masks, so the values there never
/// decide anything.
pub fn scores_at_maximal_shape(
    arch: &Architecture,
    scores: &BTreeMap<String, Vec<f32>>,
) -> BTreeMap<String, Vec<f32>> {
    let mut out = BTreeMap::new();
    for m in &arch.modules {
        if m.bias.is_some() {
            let name = bias_delta_name(&m.path);
            let v = scores
                .get(&name)
                .filter(|v| v.len() == m.out_dim)
                .cloned()
                .unwrap_or_else(|| vec![0.0; m.out_dim]);
            out.insert(name, v);
        }
        if let Some(l) = &m.lora {
            let r = l.max_rank;
            for (name, rows) in [
                (lora_u_name(&m.path), m.in_dim),
                (lora_v_name(&m.path), m.out_dim),
            ] {
                let full = match (scores.get(&name), &l.keep) {
                    (Some(v), _) if v.len() == rows * r => v.clone(),
                    (Some(v), LoraKeep::Ranks(kept))
                        if !kept.is_empty() && v.len() == rows * kept.len() =>
                    {
                        let mut f = vec![0.0; rows * r];
                        for i in 0..rows {
                            for (j, &k) in kept.iter().enumerate() {
                                f[i * r + k] = v[i * kept.len() + j];
                            }
                        }
                        f
                    }
                    _ => vec![0.0; rows * r],
                };
                out.insert(name, full);
            }
        }
    }
    out
}

/// The per-column counts of kept U and V entries of module `mi`.
fn alive_at(
    alive: &mut [Option<(Vec<usize>, Vec<usize>)>],
    mi: usize,
) -> (&mut Vec<usize>, &mut Vec<usize>) {
    let (u, v) = alive[mi].as_mut().expect("LoRA module has counts");
    (u, v)
}

/// Removes every kept entry of column `k` of U and of V (a column whose partner is empty does
/// nothing); returns how many entries that freed.
fn clear_column(w: &mut Work, alive: &mut (&mut Vec<usize>, &mut Vec<usize>), k: usize) -> usize {
    let Some((u, v, r)) = &mut w.lora else {
        return 0;
    };
    let r = *r;
    let mut freed = 0;
    for mask in [u, v] {
        for x in (k..mask.len()).step_by(r) {
            if mask.get(x) {
                mask.set(x, false);
                freed += 1;
            }
        }
    }
    alive.0[k] = 0;
    alive.1[k] = 0;
    freed
}

/// Parses a parameter budget: `"2000"`, `"2k"`, `"3.4M"`, `"10_000"`, `"1,500"`, `"1G"`.
/// Suffixes k/K (10³), m/M (10⁶), g/G/b/B (10⁹); the result must be a whole number.
pub fn parse_budget(s: &str) -> Result<usize, CoreError> {
    let bad = |reason: &str| CoreError::BadBudget {
        text: s.to_string(),
        reason: reason.to_string(),
    };
    let t: String = s
        .trim()
        .chars()
        .filter(|c| *c != '_' && *c != ',')
        .collect();
    if t.is_empty() {
        return Err(bad("empty"));
    }
    if t.starts_with('-') {
        return Err(bad("a budget cannot be negative"));
    }
    let (num, mult): (&str, u128) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1_000),
        Some('m' | 'M') => (&t[..t.len() - 1], 1_000_000),
        Some('g' | 'G' | 'b' | 'B') => (&t[..t.len() - 1], 1_000_000_000),
        _ => (&t[..], 1),
    };
    let num = num.strip_prefix('+').unwrap_or(num);
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.chars().chain(frac.chars()).all(|c| c.is_ascii_digit())
    {
        return Err(bad(
            "expected a number with an optional k/M/G suffix, e.g. 2000, 2k, 3.4M",
        ));
    }
    let too_big = || bad("too large");
    let int_v: u128 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| too_big())?
    };
    let scale = 10u128.checked_pow(frac.len() as u32).ok_or_else(too_big)?;
    let frac_v: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| too_big())?
    };
    let frac_total = frac_v.checked_mul(mult).ok_or_else(too_big)?;
    if frac_total % scale != 0 {
        return Err(bad("not a whole number of parameters"));
    }
    let total = int_v
        .checked_mul(mult)
        .and_then(|x| x.checked_add(frac_total / scale))
        .ok_or_else(too_big)?;
    usize::try_from(total).map_err(|_| too_big())
}

/// Budgets for iterative pruning from `full` down to `target` in `rounds` geometric steps:
/// `bᵢ = full·(target/full)^(i/rounds)`, rounded, non-increasing, last exactly `target`. With
/// `rounds == 0` or `target >= full` it is just `[target]`.
pub fn iterative_budgets(full: usize, target: usize, rounds: usize) -> Vec<usize> {
    if rounds <= 1 || target >= full {
        return vec![target];
    }
    let ratio = target.max(1) as f64 / full as f64;
    let mut out: Vec<usize> = (1..rounds)
        .map(|i| ((full as f64) * ratio.powf(i as f64 / rounds as f64)).round() as usize)
        .collect();
    out.push(target);
    let mut prev = full;
    for b in &mut out {
        *b = (*b).clamp(target, prev);
        prev = *b;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::ModuleArch;
    use crate::arch::{LoraArch, ModelFingerprint};
    use crate::criterion::{CriterionAccumulator, CriterionKind};
    use crate::inventory::{inventory, minilm, EncoderConfig, Family, ModuleType};
    use crate::space::SearchSpace;

    /// Two modules: A with a bias of 3 and LoRA rank 2 on in=2, out=3 (cost 5 per rank);
    /// B with a bias of 4.
    fn toy() -> Architecture {
        let m = |path: &str, out_dim: usize, lora: Option<LoraArch>| ModuleArch {
            path: path.into(),
            module_type: ModuleType::Query,
            layer: Some(0),
            in_dim: 2,
            out_dim,
            bias: Some(BiasArch::Full),
            lora,
        };
        Architecture {
            version: 1,
            model: ModelFingerprint {
                family: Family::Bert,
                num_layers: 1,
                hidden_size: 2,
                intermediate_size: 4,
            },
            space: "toy".into(),
            mode: None,
            budget: None,
            modules: vec![
                m(
                    "a",
                    3,
                    Some(LoraArch {
                        max_rank: 2,
                        keep: LoraKeep::Ranks(vec![0, 1]),
                    }),
                ),
                m("b", 4, None),
            ],
        }
    }

    fn scores(list: &[(&str, &[f32])]) -> BTreeMap<String, Vec<f32>> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect()
    }

    fn toy_scores() -> BTreeMap<String, Vec<f32>> {
        // U [2, 2] row-major (i*2+k), V [3, 2] (j*2+k).
        // rank 0: U col = 1, 1; V col = 1, 1, 1 → UV 5, UOnly 2
        // rank 1: U col = 3, 3; V col = -10, 0, 0 → UV -4, UOnly 6
        scores(&[
            ("a.bias_delta", &[0.5, 0.5, 0.5]),      // sum 1.5
            ("b.bias_delta", &[0.1, 0.1, 0.1, 2.0]), // sum 2.3
            ("a.lora_u", &[1.0, 3.0, 1.0, 3.0]),
            ("a.lora_v", &[1.0, -10.0, 1.0, 0.0, 1.0, 0.0]),
        ])
    }

    #[test]
    fn structured_order_and_costs() {
        let a = toy();
        assert_eq!(a.pet_params(), 3 + 4 + 2 * 5);
        let s = toy_scores();
        // Order (UV): rank1 (-4, cost 5), a.bias (1.5, 3), b.bias (2.3, 4), rank0 (5, 5).
        let p = prune(&a, &s, PruneMode::Structured, 12, RankGroup::UV).unwrap();
        assert_eq!(p.pet_params(), 12);
        assert_eq!(
            p.modules[0].lora.as_ref().unwrap().keep,
            LoraKeep::Ranks(vec![0])
        );
        assert_eq!(p.modules[0].bias, Some(BiasArch::Full));
        let p = prune(&a, &s, PruneMode::Structured, 11, RankGroup::UV).unwrap();
        assert_eq!(p.pet_params(), 9);
        assert_eq!(
            p.modules[0].bias,
            Some(BiasArch::Masked(Mask::new_empty(3)))
        );
        assert_eq!(p.module_counts()[0].bias_kept, 0);
        assert_eq!(p.module_counts()[0].bias_total, 3);
        let p = prune(&a, &s, PruneMode::Structured, 5, RankGroup::UV).unwrap();
        assert_eq!(p.pet_params(), 5);
        assert_eq!(p.modules[1].bias_kept(), 0);
        // Below the smallest group: everything goes.
        let p = prune(&a, &s, PruneMode::Structured, 2, RankGroup::UV).unwrap();
        assert_eq!(p.pet_params(), 0);
        assert!(p.pet_masks().is_empty());
        assert_eq!(p.mode, Some(PruneMode::Structured));
        assert_eq!(p.budget, Some(2));
    }

    #[test]
    fn uonly_grouping_changes_the_order() {
        let a = toy();
        let s = toy_scores();
        // UOnly: rank0 (2), rank1 (6); biases 1.5, 2.3 → first removed: a.bias, then rank0.
        let p = prune(&a, &s, PruneMode::Structured, 14, RankGroup::UOnly).unwrap();
        assert_eq!(p.pet_params(), 14);
        assert_eq!(p.modules[0].bias_kept(), 0);
        let p = prune(&a, &s, PruneMode::Structured, 13, RankGroup::UOnly).unwrap();
        assert_eq!(
            p.modules[0].lora.as_ref().unwrap().keep,
            LoraKeep::Ranks(vec![1])
        );
        let p = prune(&a, &s, PruneMode::Structured, 13, RankGroup::UV).unwrap();
        assert_eq!(
            p.modules[0].lora.as_ref().unwrap().keep,
            LoraKeep::Ranks(vec![0])
        );
        // UOnly does not need V's scores.
        let mut s2 = s.clone();
        s2.remove("a.lora_v");
        prune(&a, &s2, PruneMode::Structured, 13, RankGroup::UOnly).unwrap();
        assert!(prune(&a, &s2, PruneMode::Structured, 13, RankGroup::UV).is_err());
    }

    #[test]
    fn unstructured_entries_and_counts() {
        let a = toy();
        let s = toy_scores();
        // Ascending: -10 (v1), 0.0 (v3), 0.0 (v5), 0.1 b0, 0.1 b1, 0.1 b2, 0.5 a0..a2, 1.0 ...
        let p = prune(&a, &s, PruneMode::Unstructured, 15, RankGroup::UV).unwrap();
        assert_eq!(p.pet_params(), 15);
        match &p.modules[0].lora.as_ref().unwrap().keep {
            LoraKeep::Entries { u, v } => {
                assert!(u.all());
                assert_eq!(v.ones().collect::<Vec<_>>(), vec![0, 2, 4, 5]);
            }
            k => panic!("expected entries, got {k:?}"),
        }
        // Removing v5 empties V's column 1: U's column 1 (u1, u3) then does nothing and goes
        // for free, so budget 14 ends at 12 with rank 0 whole.
        let p = prune(&a, &s, PruneMode::Unstructured, 14, RankGroup::UV).unwrap();
        assert_eq!(p.pet_params(), 12);
        assert_eq!(
            p.modules[0].lora.as_ref().unwrap().keep,
            LoraKeep::Ranks(vec![0])
        );
        assert_eq!(p.modules[0].kept_rank(), Some(1));
        let p = prune(&a, &s, PruneMode::Unstructured, 11, RankGroup::UV).unwrap();
        assert_eq!(p.pet_params(), 11);
        assert_eq!(
            p.modules[1].bias,
            Some(BiasArch::Masked(Mask::from_fn(4, |i| i >= 1)))
        );
        // Neither mode overshoots a budget.
        for b in 0..=17 {
            assert!(
                prune(&a, &s, PruneMode::Unstructured, b, RankGroup::UV)
                    .unwrap()
                    .pet_params()
                    <= b
            );
            assert!(
                prune(&a, &s, PruneMode::Structured, b, RankGroup::UV)
                    .unwrap()
                    .pet_params()
                    <= b
            );
        }
    }

    #[test]
    fn unstructured_keeps_no_dead_lora_entry() {
        // For random scores and every budget: a kept entry of U's column k has a kept partner in
        // V's column k and vice versa (otherwise it would count without acting).
        let a = toy();
        let mut rng = crate::rng::Rng::new(7);
        for _ in 0..50 {
            let mut s = toy_scores();
            for v in s.values_mut() {
                for x in v.iter_mut() {
                    *x = rng.normal_f32();
                }
            }
            for b in 0..=17 {
                let p = prune(&a, &s, PruneMode::Unstructured, b, RankGroup::UV).unwrap();
                assert!(p.pet_params() <= b);
                let (u, v) = p.modules[0].lora_masks().unwrap();
                for k in 0..2 {
                    let uk = (0..2).any(|i| u.get(i * 2 + k));
                    let vk = (0..3).any(|j| v.get(j * 2 + k));
                    assert_eq!(uk, vk, "budget {b}, column {k}: U kept {uk}, V kept {vk}");
                }
            }
        }
    }

    #[test]
    fn scores_of_a_pruned_training_come_back_at_maximal_shape() {
        // After structured pruning to rank 1 (rank 0 kept), the model trains U [2, 1], V [3, 1];
        // its scores go back to column 0 of the [2, 2] / [3, 2] layout, the pruned column and
        // the pruned-away bias of `b` score 0, and the next round can prune from them.
        let a = toy();
        let p = prune(&a, &toy_scores(), PruneMode::Structured, 12, RankGroup::UV).unwrap();
        assert_eq!(
            p.modules[0].lora.as_ref().unwrap().keep,
            LoraKeep::Ranks(vec![0])
        );
        let trained = scores(&[
            ("a.bias_delta", &[1.0, 2.0, 3.0]),
            ("a.lora_u", &[5.0, 6.0]),
            ("a.lora_v", &[7.0, 8.0, 9.0]),
        ]);
        let full = scores_at_maximal_shape(&p, &trained);
        assert_eq!(full["a.lora_u"], vec![5.0, 0.0, 6.0, 0.0]);
        assert_eq!(full["a.lora_v"], vec![7.0, 0.0, 8.0, 0.0, 9.0, 0.0]);
        assert_eq!(full["b.bias_delta"], vec![0.0; 4]);
        assert_eq!(full["a.bias_delta"], vec![1.0, 2.0, 3.0]);
        let q = prune(&p, &full, PruneMode::Structured, 5, RankGroup::UV).unwrap();
        assert!(q.pet_params() <= 5);
    }

    #[test]
    fn ties_break_by_inventory_then_index() {
        let a = toy();
        let s = scores(&[
            ("a.bias_delta", &[1.0; 3]),
            ("b.bias_delta", &[1.0; 4]),
            ("a.lora_u", &[1.0; 4]),
            ("a.lora_v", &[1.0; 6]),
        ]);
        let p = prune(&a, &s, PruneMode::Unstructured, 15, RankGroup::UV).unwrap();
        assert_eq!(
            p.modules[0].bias,
            Some(BiasArch::Masked(Mask::from_fn(3, |i| i == 2)))
        );
        // Structured: a.bias (3) = 3, rank0 = 5, rank1 = 5, b.bias = 4: a.bias goes first (lowest score 3).
        let s = scores(&[
            ("a.bias_delta", &[1.0, 1.0, 3.0]),
            ("b.bias_delta", &[5.0, 0.0, 0.0, 0.0]),
            ("a.lora_u", &[1.0; 4]),
            ("a.lora_v", &[1.0; 6]),
        ]);
        // All groups score 5: a.bias first (module 0, bias), then rank 0, rank 1, then b.bias.
        let p = prune(&a, &s, PruneMode::Structured, 14, RankGroup::UV).unwrap();
        assert_eq!(p.modules[0].bias_kept(), 0);
        let p = prune(&a, &s, PruneMode::Structured, 9, RankGroup::UV).unwrap();
        assert_eq!(
            p.modules[0].lora.as_ref().unwrap().keep,
            LoraKeep::Ranks(vec![1])
        );
        assert_eq!(p.modules[1].bias_kept(), 4);
    }

    #[test]
    fn budget_edge_cases() {
        let a = toy();
        let s = toy_scores();
        for mode in [PruneMode::Structured, PruneMode::Unstructured] {
            let p = prune(&a, &s, mode, 1_000, RankGroup::UV).unwrap();
            assert_eq!(
                p.modules, a.modules,
                "{mode:?}: above max keeps everything unchanged"
            );
            let p = prune(&a, &s, mode, 17, RankGroup::UV).unwrap();
            assert_eq!(p.pet_params(), 17);
            let p = prune(&a, &s, mode, 0, RankGroup::UV).unwrap();
            assert_eq!(p.pet_params(), 0);
        }
        // Exactly at a group boundary: removing rank 1 alone (cost 5) reaches 12.
        let p = prune(&a, &s, PruneMode::Structured, 12, RankGroup::UV).unwrap();
        assert_eq!(p.pet_params(), 12);
    }

    #[test]
    fn missing_and_bad_scores_are_errors() {
        let a = toy();
        let mut s = toy_scores();
        s.remove("b.bias_delta");
        let e = prune(&a, &s, PruneMode::Structured, 5, RankGroup::UV)
            .unwrap_err()
            .to_string();
        assert!(e.contains("b.bias_delta"), "{e}");
        let mut s = toy_scores();
        s.insert("a.lora_u".into(), vec![1.0; 3]);
        assert!(prune(&a, &s, PruneMode::Structured, 5, RankGroup::UV)
            .unwrap_err()
            .to_string()
            .contains("a.lora_u"));
        let mut s = toy_scores();
        s.insert("a.bias_delta".into(), vec![1.0, f32::NAN, 1.0]);
        assert!(prune(&a, &s, PruneMode::Unstructured, 5, RankGroup::UV)
            .unwrap_err()
            .to_string()
            .contains("NaN"));
    }

    #[test]
    fn iterative_pruning_on_a_pruned_architecture() {
        let a = toy();
        let s = toy_scores();
        let p1 = prune(&a, &s, PruneMode::Unstructured, 10, RankGroup::UV).unwrap();
        let p2 = prune(&p1, &s, PruneMode::Unstructured, 6, RankGroup::UV).unwrap();
        assert_eq!(p2.pet_params(), 6);
        // Same scores: pruning in two steps equals pruning in one.
        assert_eq!(
            p2.modules,
            prune(&a, &s, PruneMode::Unstructured, 6, RankGroup::UV)
                .unwrap()
                .modules
        );
        let q1 = prune(&a, &s, PruneMode::Structured, 12, RankGroup::UV).unwrap();
        let q2 = prune(&q1, &s, PruneMode::Structured, 8, RankGroup::UV).unwrap();
        assert_eq!(q2.pet_params(), 5);
    }

    fn minilm_search(kind: CriterionKind, seed: u64) -> (Architecture, BTreeMap<String, Vec<f32>>) {
        let cfg = minilm();
        let a = Architecture::maximal(
            &SearchSpace::preset("mam16", &inventory(&cfg)).unwrap(),
            &cfg,
        )
        .unwrap();
        let mut c = CriterionAccumulator::new();
        let mut rng = crate::rng::Rng::new(1);
        for (name, shape) in a.pet_shapes() {
            let n: usize = shape.iter().product();
            let theta: Vec<f32> = (0..n).map(|_| rng.normal_f32()).collect();
            let grad: Vec<f32> = (0..n).map(|_| rng.normal_f32()).collect();
            c.observe(&name, &theta, &grad).unwrap();
        }
        (a, c.scores(kind, seed))
    }

    #[test]
    fn random_criterion_differs_from_mean() {
        let (a, mean) = minilm_search(CriterionKind::Mean, 0);
        let (_, random) = minilm_search(CriterionKind::Random, 0);
        for mode in [PruneMode::Structured, PruneMode::Unstructured] {
            let pm = prune(&a, &mean, mode, 50_000, RankGroup::UV).unwrap();
            let pr = prune(&a, &random, mode, 50_000, RankGroup::UV).unwrap();
            assert!(pm.pet_params() <= 50_000 && pr.pet_params() <= 50_000);
            assert_ne!(pm.modules, pr.modules, "{mode:?}");
            // Deterministic.
            assert_eq!(pr, prune(&a, &random, mode, 50_000, RankGroup::UV).unwrap());
        }
        let pu = prune(&a, &mean, PruneMode::Unstructured, 50_000, RankGroup::UV).unwrap();
        assert_eq!(pu.pet_params(), 50_000);
        let dir = tempfile::tempdir().unwrap();
        pu.save(dir.path()).unwrap();
        assert_eq!(Architecture::load(dir.path()).unwrap(), pu);
        assert_eq!(
            Architecture::load(dir.path()).unwrap().pet_masks(),
            pu.pet_masks()
        );
    }

    #[test]
    fn tiny_model_structured_kept_ranks_are_sorted() {
        let cfg = EncoderConfig::tiny(Family::Roberta);
        let a = Architecture::maximal(
            &SearchSpace::preset("mam16", &inventory(&cfg)).unwrap(),
            &cfg,
        )
        .unwrap();
        let s: BTreeMap<String, Vec<f32>> = a
            .pet_shapes()
            .into_iter()
            .map(|(k, sh)| {
                let n: usize = sh.iter().product();
                let v = (0..n)
                    .map(|i| crate::rng::counter_uniform(crate::rng::hash_str(&k), i as u64))
                    .collect();
                (k, v)
            })
            .collect();
        let p = prune(
            &a,
            &s,
            PruneMode::Structured,
            a.pet_params() / 3,
            RankGroup::UV,
        )
        .unwrap();
        assert!(p.pet_params() <= a.pet_params() / 3);
        p.validate().unwrap();
        for m in &p.modules {
            if let Some(l) = &m.lora {
                assert!(matches!(l.keep, LoraKeep::Ranks(_)));
            }
        }
    }

    #[test]
    fn parse_budget_cases() {
        assert_eq!(parse_budget("2000").unwrap(), 2000);
        assert_eq!(parse_budget("2k").unwrap(), 2000);
        assert_eq!(parse_budget("3.4M").unwrap(), 3_400_000);
        assert_eq!(parse_budget("10_000").unwrap(), 10_000);
        assert_eq!(parse_budget(" 1,500 ").unwrap(), 1500);
        assert_eq!(parse_budget("0").unwrap(), 0);
        assert_eq!(parse_budget("0.5k").unwrap(), 500);
        assert_eq!(parse_budget("1G").unwrap(), 1_000_000_000);
        for (text, why) in [
            ("", "empty"),
            ("-5", "negative"),
            ("abc", "expected a number"),
            ("2kk", "expected a number"),
            ("1.5", "whole number"),
            ("1.0001k", "whole number"),
            ("99999999999999999999999999999999999999999", "too large"),
        ] {
            let e = parse_budget(text).unwrap_err().to_string();
            assert!(
                e.contains(&format!("{text:?}")) && e.contains(why),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn iterative_budget_schedule() {
        assert_eq!(
            iterative_budgets(1_000_000, 1_000, 3),
            vec![100_000, 10_000, 1_000]
        );
        assert_eq!(iterative_budgets(1_000_000, 1_000, 1), vec![1_000]);
        assert_eq!(iterative_budgets(1_000_000, 1_000, 0), vec![1_000]);
        assert_eq!(iterative_budgets(100, 500, 4), vec![500]);
        let b = iterative_budgets(541_824, 0, 5);
        assert_eq!(b.len(), 5);
        assert_eq!(*b.last().unwrap(), 0);
        assert!(b.windows(2).all(|w| w[0] >= w[1]), "{b:?}");
        let b = iterative_budgets(10, 9, 6);
        assert_eq!(b.len(), 6);
        assert!(
            b.iter().all(|&x| (9..=10).contains(&x)) && b[5] == 9,
            "{b:?}"
        );
    }

    #[test]
    fn rank_group_names_match_the_cli() {
        let uv: RankGroup = serde_json::from_str("\"uv\"").unwrap();
        assert_eq!(uv, RankGroup::UV);
        assert_eq!(serde_json::to_string(&RankGroup::UV).unwrap(), "\"uv\"");
        let u: RankGroup = serde_json::from_str("\"u_only\"").unwrap();
        assert_eq!(u, RankGroup::UOnly);
    }
}
