//! Partition lists as operators write them (`0-3`, `0,2,5-7`), for the
//! manual-assignment mode (`--partitions`), where a collector reads the
//! partitions it is given instead of the ones its consumer group hands out.

use std::{collections::BTreeSet, fmt, str::FromStr};

/// A non-empty set of partition numbers, parsed from a comma-separated list
/// of partitions (`5`) and inclusive ranges (`5-7`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionList(BTreeSet<i32>);

impl PartitionList {
    /// The partitions, ascending.
    pub fn iter(&self) -> impl Iterator<Item = i32> + '_ {
        self.0.iter().copied()
    }

    /// How many partitions the list names.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: a list names at least one partition.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The highest partition named.
    pub fn max(&self) -> i32 {
        self.0.last().copied().unwrap_or(0)
    }
}

/// Why a partition list was refused; the message names the offending part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PartitionListError(String);

fn partition(s: &str, whole: &str) -> Result<i32, PartitionListError> {
    let s = s.trim();
    s.parse::<i32>().ok().filter(|p| *p >= 0).ok_or_else(|| {
        PartitionListError(format!(
            "`{s}` in `{whole}` is not a partition number (0 or more)"
        ))
    })
}

impl FromStr for PartitionList {
    type Err = PartitionListError;

    /// Parses `0-3`, `0,2,5-7`; refuses empty parts, negative or
    /// non-numeric partitions, backward ranges and a partition named twice.
    fn from_str(whole: &str) -> Result<Self, Self::Err> {
        let mut set = BTreeSet::new();
        for part in whole.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(PartitionListError(format!(
                    "`{whole}` has an empty entry; write partitions like 0-3 or 0,2,5-7"
                )));
            }
            let (from, to) = match part.split_once('-') {
                Some((a, b)) => (partition(a, whole)?, partition(b, whole)?),
                None => {
                    let p = partition(part, whole)?;
                    (p, p)
                }
            };
            if from > to {
                return Err(PartitionListError(format!(
                    "range `{part}` in `{whole}` runs backwards"
                )));
            }
            for p in from..=to {
                if !set.insert(p) {
                    return Err(PartitionListError(format!(
                        "partition {p} is named twice in `{whole}`"
                    )));
                }
            }
        }
        Ok(Self(set))
    }
}

impl fmt::Display for PartitionList {
    /// The shortest list of ranges: `0-3,5`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut it = self.0.iter().copied().peekable();
        while let Some(start) = it.next() {
            let mut end = start;
            while it.peek() == Some(&(end + 1)) {
                end = it.next().unwrap_or(end);
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn list(s: &str) -> Vec<i32> {
        s.parse::<PartitionList>().unwrap().iter().collect()
    }

    #[test]
    fn ranges_and_single_partitions() {
        assert_eq!(list("0-3"), vec![0, 1, 2, 3]);
        assert_eq!(list("0,2,5-7"), vec![0, 2, 5, 6, 7]);
        assert_eq!(list(" 4 "), vec![4]);
        assert_eq!(list("7-7"), vec![7]);
    }

    #[test]
    fn bad_lists_are_refused_naming_the_part() {
        let err = |s: &str| s.parse::<PartitionList>().unwrap_err().to_string();
        assert_eq!(err("3-1"), "range `3-1` in `3-1` runs backwards");
        assert_eq!(
            err("0,x"),
            "`x` in `0,x` is not a partition number (0 or more)"
        );
        assert_eq!(
            err("-1"),
            "`` in `-1` is not a partition number (0 or more)"
        );
        assert_eq!(
            err("0,,1"),
            "`0,,1` has an empty entry; write partitions like 0-3 or 0,2,5-7"
        );
        assert!(err("").contains("empty entry"));
        assert_eq!(err("0-2,2"), "partition 2 is named twice in `0-2,2`");
        assert!(err("1-2-3").contains("not a partition number"));
    }

    proptest! {
        #[test]
        fn display_parses_back_to_the_same_set(set in proptest::collection::btree_set(0i32..64, 1..20)) {
            let list = PartitionList(set);
            let shown = list.to_string();
            prop_assert_eq!(shown.parse::<PartitionList>().unwrap(), list);
        }
    }
}
