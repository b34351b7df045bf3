//! Enums with fixed snake_case names (the spelling of records, sweep files and CLI options), so
//! that parsers and error messages list the valid values from one place.

/// An enum whose values have fixed names.
pub trait Named: Copy + 'static {
    /// Every value, in the order error messages list them.
    const ALL: &'static [Self];

    /// The value's name, as records, sweep files and CLI options spell it.
    fn as_str(self) -> &'static str;

    /// The value named `s`, if any.
    fn from_name(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.as_str() == s)
    }

    /// The valid names, comma separated.
    fn names() -> String {
        Self::ALL
            .iter()
            .map(|v| v.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Named for crate::arch::PruneMode {
    const ALL: &'static [Self] = &[Self::Structured, Self::Unstructured];
    fn as_str(self) -> &'static str {
        match self {
            Self::Structured => "structured",
            Self::Unstructured => "unstructured",
        }
    }
}

impl Named for crate::record::Reinit {
    const ALL: &'static [Self] = &[Self::Same, Self::Fresh, Self::Keep];
    fn as_str(self) -> &'static str {
        match self {
            Self::Same => "same",
            Self::Fresh => "fresh",
            Self::Keep => "keep",
        }
    }
}

impl Named for crate::prune::RankGroup {
    const ALL: &'static [Self] = &[Self::UV, Self::UOnly];
    fn as_str(self) -> &'static str {
        match self {
            Self::UV => "uv",
            Self::UOnly => "u_only",
        }
    }
    /// `u_v` is accepted for `uv`, as the record's serde alias does.
    fn from_name(s: &str) -> Option<Self> {
        match s {
            "u_v" => Some(Self::UV),
            _ => Self::ALL.iter().copied().find(|v| v.as_str() == s),
        }
    }
}

impl Named for crate::criterion::CriterionKind {
    const ALL: &'static [Self] = &crate::criterion::CriterionKind::ALL;
    fn as_str(self) -> &'static str {
        crate::criterion::CriterionKind::as_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::PruneMode;
    use crate::criterion::CriterionKind;
    use crate::prune::RankGroup;
    use crate::record::Reinit;

    /// Each name is the value's serde spelling, so CLI, sweep files and records agree.
    fn names_match_serde<
        T: Named + serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    >() {
        for &v in T::ALL {
            assert_eq!(
                serde_json::to_value(v).unwrap(),
                serde_json::Value::String(v.as_str().into())
            );
            assert_eq!(T::from_name(v.as_str()), Some(v));
        }
        assert_eq!(T::from_name("no-such-value"), None);
    }

    #[test]
    fn every_name_is_the_serde_spelling() {
        names_match_serde::<PruneMode>();
        names_match_serde::<Reinit>();
        names_match_serde::<RankGroup>();
        names_match_serde::<CriterionKind>();
        assert_eq!(RankGroup::from_name("u_v"), Some(RankGroup::UV));
        assert_eq!(Reinit::names(), "same, fresh, keep");
    }
}
