//! Invariants of the PET encoder on tiny random models (2 layers, hidden 32): no downloads.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use petnas_core::arch::{Architecture, LoraKeep, Mask, PruneMode};
use petnas_core::criterion::{CriterionAccumulator, CriterionKind};
use petnas_core::inventory::{bias_delta_name, inventory, lora_u_name, EncoderConfig, Family};
use petnas_core::prune::{prune, RankGroup};
use petnas_core::record::LoraInit;
use petnas_core::space::SearchSpace;
use petnas_train::batch::make_batch;
use petnas_train::model::load::Weights;
use petnas_train::model::pet::init_map;
use petnas_train::model::pet::Role;
use petnas_train::model::{BuildOptions, EncoderModel};
use petnas_train::tokenize::Encoded;

fn opts(init: LoraInit) -> BuildOptions {
    BuildOptions {
        num_labels: 2,
        seed: 3,
        lora_init: init,
        full_finetune: false,
        dtype: DType::F32,
        precision: Default::default(),
    }
}

fn batch(cfg: &EncoderConfig, family: Family) -> petnas_train::model::Batch {
    let t = if family == Family::Bert { 1 } else { 0 }; // RoBERTa has one token type
    let a = Encoded {
        ids: vec![2, 10, 11, 12, 3],
        type_ids: vec![0, 0, 0, t, t],
    };
    let b = Encoded {
        ids: vec![2, 20, 3],
        type_ids: vec![0, 0, 0],
    };
    let pad = cfg.pad_token_id as u32;
    make_batch(&[&a, &b], family, pad, &Device::Cpu).unwrap()
}

fn model(
    family: Family,
    space: &str,
    init: LoraInit,
) -> (EncoderConfig, EncoderModel, Architecture) {
    let cfg = EncoderConfig::tiny(family);
    let w = Weights::random(&cfg, 1).unwrap();
    let sp = SearchSpace::from_spec(space, &inventory(&cfg)).unwrap();
    let arch = Architecture::maximal(&sp, &cfg).unwrap();
    let start = init_map(&arch, 5, init);
    let m = EncoderModel::build(&cfg, &w, Some(&arch), &start, &opts(init), &Device::Cpu).unwrap();
    (cfg, m, arch)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    a.sub(b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn gradients_reach_layer_zero_and_embeddings() {
    // Guards against ops without a backward pass (candle's fused layer_norm / softmax_last_dim).
    for family in [Family::Bert, Family::Roberta] {
        let (cfg, m, _) = model(family, "mam", LoraInit::Paper);
        let (_, logits) = m.forward(&batch(&cfg, family), None).unwrap();
        let y = Tensor::new(&[1u32, 0], &Device::Cpu).unwrap();
        let loss = petnas_train::model::ops::cross_entropy(&logits, &y).unwrap();
        let grads = loss.backward().unwrap();
        for name in [
            bias_delta_name("embeddings.LayerNorm"),
            bias_delta_name("encoder.layer.0.attention.self.query"),
            lora_u_name("encoder.layer.0.attention.self.key"),
            lora_u_name("encoder.layer.0.intermediate.dense"),
        ] {
            let t = m
                .trainables()
                .iter()
                .find(|t| t.name == name)
                .unwrap_or_else(|| panic!("{name} missing"));
            let g = grads
                .get(t.var.as_tensor())
                .unwrap_or_else(|| panic!("{family:?}: no gradient reached {name}"));
            let n = g
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(n > 0.0, "{family:?}: zero gradient at {name}");
        }
    }
}

#[test]
fn zero_deltas_equal_the_base_model() {
    for family in [Family::Bert, Family::Roberta] {
        let cfg = EncoderConfig::tiny(family);
        let w = Weights::random(&cfg, 1).unwrap();
        let base = EncoderModel::build(
            &cfg,
            &w,
            None,
            &HashMap::new(),
            &opts(LoraInit::Paper),
            &Device::Cpu,
        )
        .unwrap();
        let b = batch(&cfg, family);
        let (h0, l0) = base.forward(&b, None).unwrap();
        for init in [LoraInit::Hu, LoraInit::UZero, LoraInit::PaperZeroOffset] {
            let (_, m, _) = model(family, "mam", init);
            let (h1, l1) = m.forward(&b, None).unwrap();
            assert!(
                max_abs_diff(&h0, &h1) < 1e-5,
                "{family:?} {init:?}: hidden differs"
            );
            assert!(
                max_abs_diff(&l0, &l1) < 1e-5,
                "{family:?} {init:?}: logits differ"
            );
        }
        // The paper's init is not zero: outputs move.
        let (_, m, _) = model(family, "mam", LoraInit::Paper);
        let (h2, _) = m.forward(&b, None).unwrap();
        assert!(max_abs_diff(&h0, &h2) > 1e-4);
    }
}

#[test]
fn masking_a_rank_equals_dropping_it() {
    let family = Family::Bert;
    let (cfg, _, maximal) = model(family, "mam", LoraInit::Paper);
    let start = init_map(&maximal, 5, LoraInit::Paper);
    let w = Weights::random(&cfg, 1).unwrap();
    // Structured: keep ranks {0, 2, 5} of every LoRA module. Unstructured: the same as entry masks.
    let mut ranks = maximal.clone();
    let mut entries = maximal.clone();
    for (mr, me) in ranks.modules.iter_mut().zip(entries.modules.iter_mut()) {
        if let (Some(lr), Some(le)) = (mr.lora.as_mut(), me.lora.as_mut()) {
            let r = lr.max_rank;
            let kept = [0usize, 2, 5];
            lr.keep = LoraKeep::Ranks(kept.to_vec());
            let u = Mask::from_fn(mr.in_dim * r, |i| kept.contains(&(i % r)));
            let v = Mask::from_fn(mr.out_dim * r, |i| kept.contains(&(i % r)));
            le.keep = LoraKeep::Entries { u, v };
        }
    }
    ranks.mode = Some(PruneMode::Structured);
    entries.mode = Some(PruneMode::Unstructured);
    let a = EncoderModel::build(
        &cfg,
        &w,
        Some(&ranks),
        &start,
        &opts(LoraInit::Paper),
        &Device::Cpu,
    )
    .unwrap();
    let b = EncoderModel::build(
        &cfg,
        &w,
        Some(&entries),
        &start,
        &opts(LoraInit::Paper),
        &Device::Cpu,
    )
    .unwrap();
    let x = batch(&cfg, family);
    let (ha, _) = a.forward(&x, None).unwrap();
    let (hb, _) = b.forward(&x, None).unwrap();
    assert!(max_abs_diff(&ha, &hb) < 1e-5);
    assert_eq!(
        a.param_count(Role::Pet).unwrap(),
        b.param_count(Role::Pet).unwrap()
    );
    assert_eq!(a.param_count(Role::Pet).unwrap(), ranks.pet_params());
}

#[test]
fn merged_weights_give_the_same_outputs() {
    for family in [Family::Bert, Family::Roberta] {
        let (cfg, m, _) = model(family, "mam", LoraInit::PaperZeroOffset);
        // Move every PET tensor away from its init so the merge has something to fold in.
        for (i, t) in m.trainables().iter().enumerate() {
            let noise =
                (t.var.as_tensor().ones_like().unwrap() * (0.01 * (i % 7) as f64 - 0.03)).unwrap();
            t.var.set(&(t.var.as_tensor() + noise).unwrap()).unwrap();
        }
        let x = batch(&cfg, family);
        let (h0, l0) = m.forward(&x, None).unwrap();
        let merged: HashMap<String, Tensor> = m.merged_weights().unwrap().into_iter().collect();
        let w = Weights::from_map(merged, &cfg);
        let plain = EncoderModel::build(
            &cfg,
            &w,
            None,
            &HashMap::new(),
            &opts(LoraInit::Paper),
            &Device::Cpu,
        )
        .unwrap();
        let (h1, l1) = plain.forward(&x, None).unwrap();
        assert!(
            max_abs_diff(&h0, &h1) < 1e-4,
            "{family:?}: merged hidden differs by {}",
            max_abs_diff(&h0, &h1)
        );
        assert!(max_abs_diff(&l0, &l1) < 1e-4);
    }
}

#[test]
fn architecture_for_another_model_is_rejected() {
    let (_, _, arch) = model(Family::Bert, "bitfit", LoraInit::Paper);
    let mut other = EncoderConfig::tiny(Family::Bert);
    other.hidden_size = 48;
    other.num_hidden_layers = 3;
    let w = Weights::random(&other, 1).unwrap();
    let start = init_map(&arch, 0, LoraInit::Paper);
    let err = EncoderModel::build(
        &other,
        &w,
        Some(&arch),
        &start,
        &opts(LoraInit::Paper),
        &Device::Cpu,
    )
    .err()
    .expect("must fail");
    assert!(
        err.to_string().contains("hidden") || err.to_string().contains("layer"),
        "{err}"
    );
}

#[test]
fn missing_and_misshaped_tensors_are_named() {
    let cfg = EncoderConfig::tiny(Family::Bert);
    let good = Weights::random(&cfg, 1).unwrap();
    let mut wrong = cfg.clone();
    wrong.hidden_size = 48;
    let err = EncoderModel::build(
        &wrong,
        &good,
        None,
        &HashMap::new(),
        &opts(LoraInit::Paper),
        &Device::Cpu,
    )
    .err()
    .unwrap();
    assert!(
        err.to_string()
            .contains("embeddings.word_embeddings.weight"),
        "{err}"
    );
    let mut deeper = cfg.clone();
    deeper.num_hidden_layers = 3;
    let err = EncoderModel::build(
        &deeper,
        &good,
        None,
        &HashMap::new(),
        &opts(LoraInit::Paper),
        &Device::Cpu,
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("encoder.layer.2"), "{err}");
}

#[test]
fn search_criterion_prunes_to_budget_and_training_is_deterministic() {
    use petnas_train::glue::{Label, Task};
    use petnas_train::train::{train, Dataset, TrainContext};
    let family = Family::Bert;
    let cfg = EncoderConfig::tiny(family);
    let w = Weights::random(&cfg, 1).unwrap();
    let sp = SearchSpace::preset("mam", &inventory(&cfg)).unwrap();
    let arch = Architecture::maximal(&sp, &cfg).unwrap();
    let mut data = Dataset {
        encoded: vec![],
        labels: vec![],
    };
    for i in 0..40u32 {
        let len = 3 + (i % 7) as usize;
        let ids: Vec<u32> = (0..len as u32).map(|j| 4 + (i * 7 + j * 3) % 90).collect();
        data.labels.push(Label::Class((ids[1] % 2) as usize));
        data.encoded.push(Encoded {
            type_ids: vec![0; ids.len()],
            ids,
        });
    }
    let recipe = petnas_core::record::Recipe {
        batch_size: 8,
        max_len: 16,
        ..petnas_core::record::Recipe::new(2.0, 1e-2)
    };
    let rte = petnas_train::task::TaskInfo {
        def: petnas_train::task::glue_def(Task::Rte),
        source: petnas_train::task::Source::Glue {
            task: Task::Rte,
            dir: "unused".into(),
            layout: petnas_train::task::GlueLayout::Tsv,
        },
    };
    let ctx = TrainContext {
        task: &rte,
        family,
        pad_id: 0,
        device: &Device::Cpu,
        progress: None,
        label: String::new(),
    };
    let run = || {
        let start = init_map(&arch, 9, LoraInit::Paper);
        let m = EncoderModel::build(
            &cfg,
            &w,
            Some(&arch),
            &start,
            &opts(LoraInit::Paper),
            &Device::Cpu,
        )
        .unwrap();
        let mut crit = CriterionAccumulator::new();
        let stats = train(&m, &data, &recipe, 9, &ctx, Some(&mut crit)).unwrap();
        (
            m.pet_values().unwrap(),
            crit.scores(CriterionKind::Mean, 0),
            stats.steps,
        )
    };
    let (v1, s1, steps) = run();
    let (v2, s2, _) = run();
    assert_eq!(steps, 10);
    assert_eq!(v1, v2, "same seed, same trained values bit for bit");
    assert_eq!(s1, s2);
    let budget = arch.pet_params() / 3;
    for mode in [PruneMode::Structured, PruneMode::Unstructured] {
        let p = prune(&arch, &s1, mode, budget, RankGroup::UV).unwrap();
        assert!(p.pet_params() <= budget && p.pet_params() > 0);
        let start = init_map(&arch, 9, LoraInit::Paper);
        let m = EncoderModel::build(
            &cfg,
            &w,
            Some(&p),
            &start,
            &opts(LoraInit::Paper),
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(m.param_count(Role::Pet).unwrap(), p.pet_params());
    }
}

/// The paper's criterion is −θ·∂L/∂θ at the point where the gradient was taken: the loop must
/// observe it between `backward()` and the optimizer step. After one step from zero bias deltas
/// the bias criterion is therefore exactly 0 (observed after the step it would be −θ₁·g₀ ≠ 0),
/// and the LoRA criterion equals −U₀·g₀ recomputed by hand on the same batch.
#[test]
fn the_criterion_is_observed_after_backward_and_before_the_step() {
    use petnas_core::rng::Rng;
    use petnas_train::glue::{Label, Task};
    use petnas_train::train::{train, Dataset, TrainContext};
    let family = Family::Bert;
    let mut cfg = EncoderConfig::tiny(family);
    cfg.hidden_dropout_prob = 0.0;
    cfg.attention_probs_dropout_prob = 0.0;
    let w = Weights::random(&cfg, 1).unwrap();
    let arch = Architecture::maximal(&SearchSpace::preset("mam", &inventory(&cfg)).unwrap(), &cfg)
        .unwrap();
    let mut data = Dataset {
        encoded: vec![],
        labels: vec![],
    };
    for i in 0..16u32 {
        let ids: Vec<u32> = (0..5u32).map(|j| 4 + (i * 7 + j * 3) % 90).collect();
        data.labels.push(Label::Class((i % 2) as usize));
        data.encoded.push(Encoded {
            type_ids: vec![0; ids.len()],
            ids,
        });
    }
    let recipe = petnas_core::record::Recipe {
        batch_size: 16,
        max_len: 16,
        warmup_frac: 0.0,
        max_steps: Some(1),
        ..petnas_core::record::Recipe::new(1.0, 1e-2)
    };
    let rte = petnas_train::task::TaskInfo {
        def: petnas_train::task::glue_def(Task::Rte),
        source: petnas_train::task::Source::Glue {
            task: Task::Rte,
            dir: "unused".into(),
            layout: petnas_train::task::GlueLayout::Tsv,
        },
    };
    let ctx = TrainContext {
        task: &rte,
        family,
        pad_id: 0,
        device: &Device::Cpu,
        progress: None,
        label: String::new(),
    };
    let start = init_map(&arch, 9, LoraInit::Paper);
    let m = EncoderModel::build(
        &cfg,
        &w,
        Some(&arch),
        &start,
        &opts(LoraInit::Paper),
        &Device::Cpu,
    )
    .unwrap();
    let mut crit = CriterionAccumulator::new();
    train(&m, &data, &recipe, 9, &ctx, Some(&mut crit)).unwrap();
    let scores = crit.scores(CriterionKind::Mean, 0);
    let after = m.pet_values().unwrap();
    let bias = bias_delta_name("encoder.layer.0.attention.self.query");
    assert!(
        after[&bias].iter().any(|&v| v != 0.0),
        "the step moved the bias delta"
    );
    assert!(
        scores[&bias].iter().all(|&s| s == 0.0),
        "bias criterion observed after the step: {:?}",
        &scores[&bias][..4]
    );
    // −U₀·g₀ on the same batch (the loop's first batch order), from a fresh model at θ₀.
    let m0 = EncoderModel::build(
        &cfg,
        &w,
        Some(&arch),
        &start,
        &opts(LoraInit::Paper),
        &Device::Cpu,
    )
    .unwrap();
    let lengths: Vec<usize> = data.encoded.iter().map(|e| e.ids.len()).collect();
    let order =
        &petnas_train::batch::epoch_batches(&lengths, 16, &mut Rng::new(9).fork(0x5348_5546), 1)[0];
    let items: Vec<&Encoded> = order.iter().map(|&i| &data.encoded[i]).collect();
    let b = make_batch(&items, family, 0, &Device::Cpu).unwrap();
    let y = Tensor::from_vec(
        order.iter().map(|&i| (i % 2) as u32).collect::<Vec<_>>(),
        16,
        &Device::Cpu,
    )
    .unwrap();
    let (_, logits) = m0.forward(&b, None).unwrap();
    let grads = petnas_train::model::ops::cross_entropy(&logits, &y)
        .unwrap()
        .backward()
        .unwrap();
    let u = lora_u_name("encoder.layer.0.attention.self.query");
    let t = m0.trainables().iter().find(|t| t.name == u).unwrap();
    let g: Vec<f32> = grads
        .get(t.var.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let want: Vec<f32> = start[&u].iter().zip(&g).map(|(th, g)| -th * g).collect();
    let err = scores[&u]
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(
        scale > 0.0 && err <= 1e-4 * scale,
        "LoRA criterion {err} away from −U₀·g₀ (scale {scale})"
    );
}

/// `max_grad_norm`: gradients above the norm are scaled to it (as torch's clip_grad_norm_),
/// gradients below it are left as they are.
#[test]
fn gradient_clipping_scales_to_the_max_norm() {
    let (cfg, m, _) = model(Family::Bert, "mam", LoraInit::Paper);
    let vars: Vec<candle_core::Var> = m.trainables().iter().map(|t| t.var.clone()).collect();
    let y = Tensor::new(&[1u32, 0], &Device::Cpu).unwrap();
    let norm_of = |g: &candle_core::backprop::GradStore| -> f64 {
        vars.iter()
            .filter_map(|v| g.get(v.as_tensor()))
            .map(|t| {
                t.sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap() as f64
            })
            .sum::<f64>()
            .sqrt()
    };
    let grads = || {
        let (_, logits) = m.forward(&batch(&cfg, Family::Bert), None).unwrap();
        petnas_train::model::ops::cross_entropy(&logits, &y)
            .unwrap()
            .backward()
            .unwrap()
    };
    let mut g = grads();
    let before = norm_of(&g);
    assert!(before > 0.0);
    let reported = petnas_train::train::clip_grad_norm(&vars, &mut g, before / 4.0).unwrap();
    assert!((reported - before).abs() <= 1e-6 * before);
    assert!(
        (norm_of(&g) - before / 4.0).abs() <= 1e-4 * before,
        "clipped norm {} vs {}",
        norm_of(&g),
        before / 4.0
    );
    let mut g2 = grads();
    petnas_train::train::clip_grad_norm(&vars, &mut g2, before * 4.0).unwrap();
    assert!(
        (norm_of(&g2) - before).abs() <= 1e-6 * before,
        "a norm below the limit must not change"
    );
}

/// Every value of `a` equals `b` (bit for bit but for the sign of zero, which no later operation
/// can turn into a difference: sums start from +0.0).
fn assert_same(what: &str, a: &Tensor, b: &Tensor) {
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(x == y, "{what}[{i}]: {x:e} (fused layer) vs {y:e} (per-op)");
    }
}

#[test]
fn the_fused_layer_op_matches_the_per_op_path_bit_for_bit() {
    use petnas_core::record::Precision;
    use petnas_train::model::ops::DropoutRng;
    // Structured and unstructured LoRA (masked entries), all bias deltas, every LoRA init, both
    // families and precisions, with dropout on: the fused encoder layer must give exactly the
    // per-op path's outputs and gradients.
    let cases = [
        (Family::Bert, "mam", LoraInit::Paper, Precision::Fp32),
        (
            Family::Roberta,
            "mam",
            LoraInit::PaperZeroOffset,
            Precision::Fp32,
        ),
        (Family::Bert, "bitfit", LoraInit::Paper, Precision::Fp32),
        (Family::Bert, "mam", LoraInit::Hu, Precision::Bf16),
        (Family::Roberta, "mam", LoraInit::Paper, Precision::Bf16),
    ];
    for (ci, &(family, space, init, precision)) in cases.iter().enumerate() {
        let cfg = EncoderConfig::tiny(family);
        let w = Weights::random(&cfg, 1).unwrap();
        let sp = SearchSpace::from_spec(space, &inventory(&cfg)).unwrap();
        let mut arch = Architecture::maximal(&sp, &cfg).unwrap();
        if ci == 0 {
            // Unstructured: drop every third entry of U and V and every other bias entry.
            for m in arch.modules.iter_mut() {
                if let Some(l) = m.lora.as_mut() {
                    let r = l.max_rank;
                    let u = Mask::from_fn(m.in_dim * r, |i| i % 3 != 0);
                    let v = Mask::from_fn(m.out_dim * r, |i| i % 3 != 1);
                    l.keep = LoraKeep::Entries { u, v };
                }
                if m.bias.is_some() {
                    m.bias = Some(petnas_core::arch::BiasArch::Masked(Mask::from_fn(
                        m.out_dim,
                        |i| i % 2 == 0,
                    )));
                }
            }
            arch.mode = Some(PruneMode::Unstructured);
        }
        let start = init_map(&arch, 5, init);
        let mut o = opts(init);
        o.precision = precision;
        let run = |fused: bool| {
            let mut m =
                EncoderModel::build(&cfg, &w, Some(&arch), &start, &o, &Device::Cpu).unwrap();
            m.set_layer_fusion(fused);
            let mut rng = DropoutRng::new(11);
            let (hidden, logits) = m.forward(&batch(&cfg, family), Some(&mut rng)).unwrap();
            let y = Tensor::new(&[1u32, 0], &Device::Cpu).unwrap();
            let loss = petnas_train::model::ops::cross_entropy(&logits, &y).unwrap();
            let grads = loss.backward().unwrap();
            let g: Vec<(String, Tensor)> = m
                .trainables()
                .iter()
                .map(|t| {
                    (
                        t.name.clone(),
                        grads.get(t.var.as_tensor()).unwrap().clone(),
                    )
                })
                .collect();
            (hidden, logits, loss, g, rng.position())
        };
        let (ha, la, lossa, ga, pa) = run(true);
        let (hb, lb, lossb, gb, pb) = run(false);
        let case = format!("case {ci} ({family:?} {space} {init:?} {precision:?})");
        assert_eq!(pa, pb, "{case}: dropout counters");
        assert_same(&format!("{case} hidden"), &ha, &hb);
        assert_same(&format!("{case} logits"), &la, &lb);
        assert_same(&format!("{case} loss"), &lossa, &lossb);
        assert_eq!(ga.len(), gb.len());
        let mut nonzero = 0;
        for ((n, a), (_, b)) in ga.iter().zip(&gb) {
            assert_same(&format!("{case} grad {n}"), a, b);
            nonzero += (a
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0) as usize;
        }
        // The comparison means something only if gradients reached the PET tensors.
        assert!(
            nonzero > ga.len() / 2,
            "{case}: {nonzero} of {} gradients nonzero",
            ga.len()
        );
    }
}
