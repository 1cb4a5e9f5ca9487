//! The vulnerability ids of one snapshot as the agent receives them: each id once, numbered in
//! the order the control plane sends them (`SnapshotChunk.vulnerability_dictionary`), and
//! summaries that list numbers instead of ids (`ImageSummary.vulnerability_refs`). A snapshot of
//! 100,000 images with 50 vulnerabilities each names a few tens of thousands of distinct ids:
//! interning those once, and each summary's numbers with an array lookup, replaces five
//! million id strings decoded and looked up one by one.
//!
//! Nothing in a summary's refs is trusted to be in id order: each entry's rank (its id's place
//! among the dictionary's ids, sorted) gives the order and finds repeats without comparing
//! strings per summary.

use super::summary::interner;
use crate::Severity;

/// Dictionary entries past the interner's capacity: their ids cannot be kept.
const NOT_INTERNED: u32 = u32::MAX;

/// The dictionary of one snapshot (or one cache file of a snapshot).
#[derive(Debug, Default)]
pub struct VulnerabilityDictionary {
    /// The interner's number per wire number (`NOT_INTERNED` past its capacity).
    numbers: Vec<u32>,
    /// The place of each entry's id among all entries' ids, sorted (equal ids, equal rank);
    /// recomputed when entries were added since.
    ranks: Vec<u32>,
    /// Reused by `resolve` for one summary's entries, and for what it returns.
    scratch: Vec<(u32, u32, Severity, bool)>,
    resolved: Vec<(u32, Severity, bool)>,
}

impl VulnerabilityDictionary {
    /// Entries so far.
    pub fn len(&self) -> usize {
        self.numbers.len()
    }

    /// Whether no entry arrived yet.
    pub fn is_empty(&self) -> bool {
        self.numbers.is_empty()
    }

    /// Appends a chunk's entries (numbered on from the entries before them).
    pub fn extend<'a>(&mut self, ids: impl Iterator<Item = &'a str>) {
        let numbers = interner::intern_all(ids);
        self.numbers
            .extend(numbers.into_iter().map(|n| n.unwrap_or(NOT_INTERNED)));
    }

    /// One summary's vulnerabilities, given as wire numbers with their severity and fixable
    /// flag: sorted by id, each id once (the highest severity wins, fixable if any instance
    /// is), as interner numbers; ids past the interner's capacity are left out, as in
    /// `ScanSummary::new`. Errs naming the first number that is not in the dictionary.
    pub(super) fn resolve(
        &mut self,
        refs: impl Iterator<Item = (u32, Severity, bool)>,
    ) -> Result<&[(u32, Severity, bool)], String> {
        self.rank();
        let mut entries = std::mem::take(&mut self.scratch);
        entries.clear();
        for (wire, severity, fixable) in refs {
            let (Some(&number), Some(&rank)) = (
                self.numbers.get(wire as usize),
                self.ranks.get(wire as usize),
            ) else {
                self.scratch = entries;
                return Err(format!(
                    "vulnerability ref {wire} is not in the snapshot's dictionary of {} ids",
                    self.numbers.len()
                ));
            };
            entries.push((rank, number, severity, fixable));
        }
        if !entries.is_sorted_by(|a, b| a.0 < b.0) {
            entries.sort_unstable_by_key(|e| e.0);
        }
        let out = &mut self.resolved;
        out.clear();
        let mut last_rank = None;
        for &(rank, number, severity, fixable) in &entries {
            match out.last_mut() {
                Some(last) if last_rank == Some(rank) => {
                    last.1 = last.1.max(severity);
                    last.2 |= fixable;
                }
                _ => {
                    out.push((number, severity, fixable));
                    last_rank = Some(rank);
                }
            }
        }
        out.retain(|e| e.0 != NOT_INTERNED);
        self.scratch = entries;
        Ok(&self.resolved)
    }

    /// Brings `ranks` up to date with the entries.
    fn rank(&mut self) {
        if self.ranks.len() == self.numbers.len() {
            return;
        }
        let name = |number: u32| interner::name(number).unwrap_or("");
        let mut order: Vec<u32> = (0..self.numbers.len() as u32).collect();
        order.sort_unstable_by_key(|&wire| name(self.numbers[wire as usize]));
        self.ranks = vec![0; self.numbers.len()];
        let mut previous: Option<(&str, u32)> = None;
        for (place, &wire) in order.iter().enumerate() {
            let id = name(self.numbers[wire as usize]);
            let rank = match previous {
                Some((last, rank)) if last == id => rank,
                _ => place as u32,
            };
            previous = Some((id, rank));
            self.ranks[wire as usize] = rank;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Severity::{Critical, High, Low, Medium};

    fn names(entries: &[(u32, Severity, bool)]) -> Vec<(&'static str, Severity, bool)> {
        entries
            .iter()
            .map(|&(n, s, f)| (interner::name(n).unwrap(), s, f))
            .collect()
    }

    #[test]
    fn refs_resolve_in_id_order_with_repeats_merged() {
        let mut dictionary = VulnerabilityDictionary::default();
        dictionary.extend(["dict-CVE-3", "dict-CVE-1"].into_iter());
        // A later chunk adds an id that sorts between the earlier ones, and one that repeats
        // an earlier id (a control plane should not, but it changes nothing).
        dictionary.extend(["dict-CVE-2", "dict-CVE-1"].into_iter());
        assert_eq!(dictionary.len(), 4);
        let resolved = dictionary
            .resolve(
                [
                    (0, Low, false),
                    (1, Medium, false),
                    (2, High, false),
                    (3, Critical, true),
                    (0, Medium, true),
                ]
                .into_iter(),
            )
            .unwrap();
        assert_eq!(
            names(resolved),
            [
                ("dict-CVE-1", Critical, true),
                ("dict-CVE-2", High, false),
                ("dict-CVE-3", Medium, true),
            ]
        );
    }

    #[test]
    fn a_ref_outside_the_dictionary_is_an_error_naming_it() {
        let mut dictionary = VulnerabilityDictionary::default();
        dictionary.extend(["dict-CVE-9"].into_iter());
        let error = dictionary
            .resolve([(0, Low, false), (7, High, true)].into_iter())
            .unwrap_err();
        assert_eq!(
            error,
            "vulnerability ref 7 is not in the snapshot's dictionary of 1 ids"
        );
        // The dictionary is still usable after a refused summary.
        let resolved = dictionary.resolve([(0, High, true)].into_iter()).unwrap();
        assert_eq!(names(resolved), [("dict-CVE-9", High, true)]);
    }
}
