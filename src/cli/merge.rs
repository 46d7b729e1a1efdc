//! How merges decide: the conflict policy and which keys they take.

use clap::Args;
use common::merge::{Conflict, KeyFilter, KeyPattern, Policy};

#[derive(Args, Clone, Debug)]
pub struct MergeArgs {
    /// Who wins a key changed differently on both sides: ours, theirs, or newest (the later write; see docs/format.md).
    #[arg(long, env = "GITCD_CONFLICT", default_value = "newest")]
    pub conflict: Conflict,
    /// Merge only keys matching this pattern (repeatable; `*` within a segment, `**` across segments).
    #[arg(long, env = "GITCD_INCLUDE", value_delimiter = ',')]
    pub include: Vec<String>,
    /// Never take keys matching this pattern from the other side (repeatable).
    #[arg(long, env = "GITCD_EXCLUDE", value_delimiter = ',')]
    pub exclude: Vec<String>,
    /// A named set of excludes (repeatable): kubernetes (see docs/kubernetes.md).
    #[arg(long, env = "GITCD_EXCLUDE_PRESET", value_delimiter = ',', value_parser = common::merge::presets::NAMES.to_vec())]
    pub exclude_preset: Vec<String>,
}

impl MergeArgs {
    /// The policy, or a usage error.
    pub fn to_policy(&self) -> Result<Policy, String> {
        let parse = |v: &[String], flag: &str| -> Result<Vec<KeyPattern>, String> {
            v.iter()
                .map(|p| KeyPattern::parse(p).map_err(|e| format!("{flag}: {e}")))
                .collect()
        };
        let mut exclude = parse(&self.exclude, "--exclude")?;
        for name in &self.exclude_preset {
            let patterns =
                common::merge::presets::preset(name).ok_or_else(|| format!("--exclude-preset {name:?}: unknown"))?;
            for (p, _) in patterns {
                exclude.push(KeyPattern::parse(p).map_err(|e| format!("--exclude-preset {name}: {e}"))?);
            }
        }
        Ok(Policy {
            conflict: self.conflict,
            filter: KeyFilter {
                include: parse(&self.include, "--include")?,
                exclude,
            },
        })
    }
}
