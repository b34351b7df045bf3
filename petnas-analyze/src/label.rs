//! Display labels of methods, as the paper's tables name them (Lawton et al., 2023, Section 4 and
//! Table 1): the baselines Full FT, BitFit, LoRA and MaM, and the searched methods S-/U-BitFit
//! and S-/U-MaM (structured / unstructured pruning of the bias-only or the bias + LoRA space).
//!
//! One function, [`method_label`], turns a [`RunSpec`] into its label, so that every table,
//! figure and finding groups runs the same way.

use petnas_core::record::LoraInit;
use petnas_core::record::Method;
use petnas_core::{CriterionKind, ModuleCount, PruneMode, Reinit, RunSpec};

/// What kind of run a label stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Group {
    /// A hand-designed method (full fine-tuning, BitFit, LoRA, MaM, an explicit architecture).
    Baseline,
    /// A pruned retraining of a search (S-/U-BitFit, S-/U-MaM and their variants).
    Searched,
    /// The maximal training a search starts from; excluded from tables by default.
    SearchStart,
}

impl Group {
    /// The lowercase name stored in the runs frame.
    pub fn as_str(self) -> &'static str {
        match self {
            Group::Baseline => "baseline",
            Group::Searched => "searched",
            Group::SearchStart => "search_start",
        }
    }
}

/// The label of a run and how it was derived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MethodLabel {
    /// The display label, e.g. `"Random S-BitFit"` or `"U-MaM [last]"`.
    pub label: String,
    /// Baseline, searched or search start.
    pub group: Group,
    /// The searched method without prefix and suffixes (`"S-BitFit"`), or the label itself.
    pub base: String,
    /// Whether the architecture was pruned by random scores (the random-search baseline).
    pub random: bool,
    /// Whether the run is an ablation (a non-mean, non-random criterion or a non-`same` reinit).
    pub ablation: bool,
}

/// Whether a search space carries LoRA: decided by the run's module counts when it has any
/// (a module with LoRA entries at max rank), otherwise by the space's name or spec text.
pub fn space_has_lora(space: &str, modules: &[ModuleCount]) -> bool {
    if !modules.is_empty() {
        return modules
            .iter()
            .any(|m| m.lora_total > 0 || m.max_rank.is_some());
    }
    // The space grammar is petnas-core's; a spec it cannot read counts as bias-only.
    petnas_core::space::spec_has_lora(space).unwrap_or(false)
}

/// The label of a baseline method name (`"full"`, `"bitfit"`, ...); unknown names and space
/// specs are shown as given.
fn baseline_label(method: &Method) -> String {
    match method {
        Method::Full => "Full FT".to_string(),
        Method::Search => "search".to_string(),
        Method::Arch(file) => {
            let stem = std::path::Path::new(file)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| file.to_string());
            format!("Arch {stem}")
        }
        Method::Space(m) => match m.as_str() {
            "bitfit" => "BitFit".to_string(),
            "lora" => "LoRA".to_string(),
            "mam" => "MaM".to_string(),
            "mam16" => "MaM (r=16)".to_string(),
            m => format!("PET[{m}]"),
        },
    }
}

/// The display label of a run.
///
/// `has_lora` says whether the searched space carries LoRA (see [`space_has_lora`]): a searched
/// bias-only space is "BitFit", any space with LoRA is "MaM". Rules, in order:
/// baselines by method name; `search` with no mode → `"<space> (search start)"`; otherwise
/// `S-`/`U-` by mode, `Random ` prefix for the random criterion, ` [space=…]` for spaces other
/// than `bitfit`/`mam16`, ` [last]`-style suffixes for other criteria and ` [reinit=…]` for a
/// re-initialisation other than `same`.
pub fn method_label(spec: &RunSpec, has_lora: bool) -> MethodLabel {
    if !spec.method.is_search() {
        let base = baseline_label(&spec.method);
        let init = init_suffix(spec, has_lora);
        return MethodLabel {
            label: format!("{base}{}", init.as_deref().unwrap_or("")),
            base,
            group: Group::Baseline,
            random: false,
            ablation: init.is_some(),
        };
    }
    let space = spec.space.as_deref().unwrap_or("?");
    let Some(mode) = spec.mode else {
        // The maximal training of a preset space is that preset trained with the search's recipe:
        // the maximal run of a `bitfit` search *is* full BitFit, the comparison the paper draws.
        if matches!(space, "bitfit" | "lora" | "mam" | "mam16") {
            let base = baseline_label(&Method::Space(space.to_string()));
            let init = init_suffix(spec, has_lora);
            return MethodLabel {
                label: format!("{base}{}", init.as_deref().unwrap_or("")),
                base,
                group: Group::Baseline,
                random: false,
                ablation: init.is_some(),
            };
        }
        let label = format!("{space} (search start)");
        return MethodLabel {
            base: label.clone(),
            label,
            group: Group::SearchStart,
            random: false,
            ablation: false,
        };
    };
    let family = if has_lora { "MaM" } else { "BitFit" };
    let prefix = match mode {
        PruneMode::Structured => "S-",
        PruneMode::Unstructured => "U-",
    };
    let base = format!("{prefix}{family}");
    let criterion = spec.criterion.unwrap_or(CriterionKind::Mean);
    let reinit = spec.reinit.unwrap_or(Reinit::Same);
    let random = criterion == CriterionKind::Random;
    let mut label = if random {
        format!("Random {base}")
    } else {
        base.clone()
    };
    let canonical_space = if has_lora { "mam16" } else { "bitfit" };
    if space != canonical_space {
        label.push_str(&format!(" [space={space}]"));
    }
    let mut ablation = false;
    if !matches!(criterion, CriterionKind::Mean | CriterionKind::Random) {
        label.push_str(&format!(" [{}]", criterion.as_str()));
        ablation = true;
    }
    if reinit != Reinit::Same {
        let name = match reinit {
            Reinit::Same => "same",
            Reinit::Fresh => "fresh",
            Reinit::Keep => "keep",
        };
        label.push_str(&format!(" [reinit={name}]"));
        ablation = true;
    }
    if let Some(init) = init_suffix(spec, has_lora) {
        label.push_str(&init);
        ablation = true;
    }
    if let Some(r) = spec.prune_rounds.filter(|&r| r > 1) {
        label.push_str(&format!(" [iterative x{r}]"));
        ablation = true;
    }
    MethodLabel {
        label,
        group: Group::Searched,
        base,
        random,
        ablation,
    }
}

/// ` [lora_init=hu]` (and the like) for a run with LoRA whose init is not the paper's eq. 1, so
/// that an init ablation is never averaged with the paper's runs.
fn init_suffix(spec: &RunSpec, has_lora: bool) -> Option<String> {
    (has_lora && spec.lora_init != LoraInit::Paper)
        .then(|| format!(" [lora_init={}]", spec.lora_init.as_str()))
}

/// Sort key of a label in the tables: baselines in the paper's order (Full FT, BitFit, LoRA,
/// MaM), other baselines, then S-BitFit, U-BitFit, S-MaM, U-MaM each followed by its random
/// and ablation variants, then anything else alphabetically.
pub fn label_order(label: &str) -> (u32, u32, String) {
    const BASELINES: [&str; 5] = ["Full FT", "BitFit", "LoRA", "MaM", "MaM (r=16)"];
    const SEARCHED: [&str; 4] = ["S-BitFit", "U-BitFit", "S-MaM", "U-MaM"];
    if let Some(i) = BASELINES.iter().position(|b| *b == label) {
        return (0, i as u32, String::new());
    }
    let (random, rest) = match label.strip_prefix("Random ") {
        Some(r) => (1, r),
        None => (0, label),
    };
    let base = rest.split(" [").next().unwrap_or(rest);
    if let Some(i) = SEARCHED.iter().position(|b| *b == base) {
        let variant = u32::from(rest != base);
        return (2 + i as u32, random * 2 + variant, label.to_string());
    }
    if label.ends_with("(search start)") {
        return (10, 0, label.to_string());
    }
    (1, 0, label.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use petnas_core::{Family, LoraInit, ModelFingerprint, Recipe};

    fn spec(method: &str) -> RunSpec {
        RunSpec {
            task: "rte".into(),
            model: "m".into(),
            model_fingerprint: ModelFingerprint {
                family: Family::Bert,
                num_layers: 6,
                hidden_size: 384,
                intermediate_size: 1536,
            },
            method: method.into(),
            space: None,
            mode: None,
            budget: None,
            seed: 0,
            recipe: Recipe {
                batch_size: 32,
                ..Recipe::new(1.0, 1e-3)
            },
            criterion: None,
            reinit: None,
            lora_init: LoraInit::Paper,
            device: "cpu".into(),
            rank_group: None,
            maximal_hash: None,
            precision: Default::default(),
            prune_rounds: None,
            task_def: None,
            data: None,
        }
    }

    fn search(
        space: &str,
        mode: Option<PruneMode>,
        criterion: CriterionKind,
        reinit: Reinit,
    ) -> RunSpec {
        let mut s = spec("search");
        s.space = Some(space.into());
        s.mode = mode;
        s.budget = Some(50_000);
        s.criterion = Some(criterion);
        s.reinit = Some(reinit);
        s
    }

    fn label(s: &RunSpec) -> String {
        let lora = space_has_lora(s.space.as_deref().unwrap_or(""), &[]);
        method_label(s, lora).label
    }

    #[test]
    fn baselines() {
        for (m, l) in [
            ("full", "Full FT"),
            ("bitfit", "BitFit"),
            ("lora", "LoRA"),
            ("mam", "MaM"),
            ("mam16", "MaM (r=16)"),
            ("arch:archs/best.json", "Arch best"),
            ("bias=all;layers=2-5", "PET[bias=all;layers=2-5]"),
        ] {
            let got = method_label(&spec(m), false);
            assert_eq!(got.label, l);
            assert_eq!(got.group, Group::Baseline);
        }
    }

    #[test]
    fn searched_methods() {
        use CriterionKind::*;
        use PruneMode::*;
        let s = Some(Structured);
        let u = Some(Unstructured);
        for (spec, want) in [
            (search("bitfit", s, Mean, Reinit::Same), "S-BitFit"),
            (search("bitfit", u, Mean, Reinit::Same), "U-BitFit"),
            (search("mam16", s, Mean, Reinit::Same), "S-MaM"),
            (search("mam16", u, Mean, Reinit::Same), "U-MaM"),
            (search("bitfit", s, Random, Reinit::Same), "Random S-BitFit"),
            (search("mam16", u, Random, Reinit::Same), "Random U-MaM"),
            (search("bitfit", u, Last, Reinit::Same), "U-BitFit [last]"),
            (
                search("bitfit", s, Magnitude, Reinit::Same),
                "S-BitFit [magnitude]",
            ),
            (
                search("mam16", s, Mean, Reinit::Keep),
                "S-MaM [reinit=keep]",
            ),
            (
                search("bitfit", s, Abs, Reinit::Fresh),
                "S-BitFit [abs] [reinit=fresh]",
            ),
            (search("mam", s, Mean, Reinit::Same), "S-MaM [space=mam]"),
            (
                search("bias=all;lora=query@8", u, Mean, Reinit::Same),
                "U-MaM [space=bias=all;lora=query@8]",
            ),
            (search("mam16", None, Mean, Reinit::Same), "MaM (r=16)"),
            (search("bitfit", None, Mean, Reinit::Same), "BitFit"),
            (
                search("bias=all;lora=query@8", None, Mean, Reinit::Same),
                "bias=all;lora=query@8 (search start)",
            ),
        ] {
            assert_eq!(label(&spec), want, "{spec:?}");
        }
        let r = method_label(&search("bitfit", s, Random, Reinit::Same), false);
        assert!(r.random && !r.ablation && r.base == "S-BitFit");
        let a = method_label(&search("bitfit", s, Last, Reinit::Same), false);
        assert!(!a.random && a.ablation);
        let st = method_label(&search("mam16", None, Mean, Reinit::Same), true);
        assert_eq!(st.group, Group::Baseline);
        let st = method_label(&search("bias=all", None, Mean, Reinit::Same), false);
        assert_eq!(st.group, Group::SearchStart);
        // A LoRA init other than eq. 1 is an ablation, for the searched runs and the maximal one.
        let mut hu = search("mam16", u, Mean, Reinit::Same);
        hu.lora_init = LoraInit::Hu;
        let l = method_label(&hu, true);
        assert_eq!(
            (l.label.as_str(), l.ablation),
            ("U-MaM [lora_init=hu]", true)
        );
        hu.mode = None;
        let l = method_label(&hu, true);
        assert_eq!(
            (l.label.as_str(), l.ablation),
            ("MaM (r=16) [lora_init=hu]", true)
        );
        let mut bitfit = search("bitfit", u, Mean, Reinit::Same);
        bitfit.lora_init = LoraInit::Hu;
        assert_eq!(method_label(&bitfit, false).label, "U-BitFit");
        // Iterative pruning is its own method, never a seed of the one-shot one.
        let mut it = search("bitfit", u, Mean, Reinit::Same);
        it.prune_rounds = Some(3);
        let l = method_label(&it, false);
        assert_eq!(
            (l.label.as_str(), l.ablation),
            ("U-BitFit [iterative x3]", true)
        );
    }

    #[test]
    fn criterion_and_reinit_default_to_the_paper() {
        let mut s = search(
            "bitfit",
            Some(PruneMode::Structured),
            CriterionKind::Mean,
            Reinit::Same,
        );
        s.criterion = None;
        s.reinit = None;
        assert_eq!(label(&s), "S-BitFit");
    }

    #[test]
    fn lora_detection_prefers_module_counts() {
        assert!(!space_has_lora("bias=all;lora=none", &[]));
        assert!(space_has_lora("bias=all;lora=query,key@4", &[]));
        let m = ModuleCount {
            path: "embeddings.LayerNorm".into(),
            module_type: petnas_core::ModuleType::EmbeddingsLayerNorm,
            layer: None,
            bias_kept: 1,
            bias_total: 1,
            lora_kept: 0,
            lora_total: 0,
            kept_rank: None,
            max_rank: None,
        };
        assert!(!space_has_lora("mam16", &[m]));
    }

    #[test]
    fn order() {
        let mut v = vec![
            "U-MaM",
            "Random S-BitFit",
            "S-BitFit [last]",
            "MaM",
            "S-BitFit",
            "Full FT",
            "U-BitFit",
            "BitFit",
            "Arch x",
        ];
        v.sort_by_key(|l| label_order(l));
        assert_eq!(
            v,
            [
                "Full FT",
                "BitFit",
                "MaM",
                "Arch x",
                "S-BitFit",
                "S-BitFit [last]",
                "Random S-BitFit",
                "U-BitFit",
                "U-MaM"
            ]
        );
    }
}
