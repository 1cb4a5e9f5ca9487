//! What an agent keeps of each image's scan: enough to evaluate every image rule (severity
//! thresholds, fixable-only, named ids, malware, baseline failures) and nothing else. Agents
//! hold one per image for 100,000 images, and images share most of their vulnerabilities, so
//! ids are interned process-wide (`interner`) and each vulnerability of a summary costs four
//! bytes: the id's number, its severity and whether a fix exists.

use super::SeverityCounts;
use crate::Severity;

/// The per-image scan result a policy is evaluated against.
///
/// Vulnerabilities are deduplicated by id (the highest severity wins, fixable if any
/// instance is) and sorted by id; `counts` keeps the scanner's per-package totals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanSummary {
    counts: SeverityCounts,
    /// One packed `Entry` per vulnerability, in id order.
    entries: Box<[u32]>,
    malware: Box<[Box<str>]>,
    baseline_failures: Box<[Box<str>]>,
}

/// A vulnerability packed in 32 bits: the interned id's number in the low 27, the severity
/// in the next 3, the fixable flag on top.
struct Entry;

impl Entry {
    const ID_BITS: u32 = 27;
    const ID_MASK: u32 = (1 << Self::ID_BITS) - 1;
    const FIXABLE: u32 = 1 << 30;

    fn pack(id: u32, severity: Severity, fixable: bool) -> u32 {
        id | ((severity as u32) << Self::ID_BITS) | if fixable { Self::FIXABLE } else { 0 }
    }

    fn id(entry: u32) -> u32 {
        entry & Self::ID_MASK
    }

    fn severity(entry: u32) -> Severity {
        const ALL: [Severity; 5] = [
            Severity::Unknown,
            Severity::Low,
            Severity::Medium,
            Severity::High,
            Severity::Critical,
        ];
        ALL.get(((entry >> Self::ID_BITS) & 0b111) as usize)
            .copied()
            .unwrap_or(Severity::Unknown)
    }

    fn fixable(entry: u32) -> bool {
        entry & Self::FIXABLE != 0
    }
}

/// One deduplicated vulnerability of a summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SummaryVulnerability<'a> {
    pub id: &'a str,
    pub severity: Severity,
    /// Some instance of it has a fixed version.
    pub fixable: bool,
}

impl ScanSummary {
    /// Builds a summary from any source (a parsed report, or a stored or synced copy), so
    /// that deduplication and ordering are the same everywhere. `counts` are taken as given.
    pub fn new<'a>(
        counts: SeverityCounts,
        vulnerabilities: impl IntoIterator<Item = (&'a str, Severity, bool)>,
        malware: impl IntoIterator<Item = &'a str>,
        baseline_failures: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let mut items: Vec<(&str, Severity, bool)> = vulnerabilities.into_iter().collect();
        items.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut merged: Vec<(&str, Severity, bool)> = Vec::with_capacity(items.len());
        for (id, severity, fixable) in items {
            match merged.last_mut() {
                Some(last) if last.0 == id => {
                    last.1 = last.1.max(severity);
                    last.2 |= fixable;
                }
                _ => merged.push((id, severity, fixable)),
            }
        }
        let numbers = interner::intern_all(merged.iter().map(|m| m.0));
        let entries = merged
            .iter()
            .zip(numbers)
            // Past the interner's capacity an id cannot be kept; it is left out.
            .filter_map(|((_, severity, fixable), number)| {
                number.map(|n| Entry::pack(n, *severity, *fixable))
            })
            .collect();
        Self {
            counts,
            entries,
            malware: sorted_unique(malware),
            baseline_failures: sorted_unique(baseline_failures),
        }
    }

    /// A summary of vulnerabilities already interned, sorted by id and distinct (as
    /// `VulnerabilityDictionary::resolve` gives them).
    #[cfg(feature = "proto")]
    pub(super) fn from_interned<'a>(
        counts: SeverityCounts,
        vulnerabilities: &[(u32, Severity, bool)],
        malware: impl IntoIterator<Item = &'a str>,
        baseline_failures: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        Self {
            counts,
            entries: vulnerabilities
                .iter()
                .map(|&(number, severity, fixable)| Entry::pack(number, severity, fixable))
                .collect(),
            malware: sorted_unique(malware),
            baseline_failures: sorted_unique(baseline_failures),
        }
    }

    /// Vulnerabilities per severity, one per (vulnerability, package) as the scanner counted.
    pub fn counts(&self) -> SeverityCounts {
        self.counts
    }

    /// Distinct vulnerabilities, sorted by id.
    pub fn vulnerabilities(&self) -> impl ExactSizeIterator<Item = SummaryVulnerability<'static>> {
        self.entries.iter().map(move |&entry| SummaryVulnerability {
            id: interner::name(Entry::id(entry)).unwrap_or(""),
            severity: Entry::severity(entry),
            fixable: Entry::fixable(entry),
        })
    }

    /// The vulnerability with this id, for policies that block or ignore named ids: a binary
    /// search (entries are in id order), without a lock.
    pub fn vulnerability(&self, id: &str) -> Option<SummaryVulnerability<'static>> {
        let name = |entry: u32| interner::name(Entry::id(entry)).unwrap_or("");
        let at = self
            .entries
            .binary_search_by(|&entry| name(entry).cmp(id))
            .ok()?;
        let entry = self.entries[at];
        Some(SummaryVulnerability {
            id: name(entry),
            severity: Entry::severity(entry),
            fixable: Entry::fixable(entry),
        })
    }

    /// Signatures of the malicious files found, sorted, without duplicates.
    pub fn malware(&self) -> &[Box<str>] {
        &self.malware
    }

    /// Ids of the failed baseline checks, sorted, without duplicates.
    pub fn baseline_failures(&self) -> &[Box<str>] {
        &self.baseline_failures
    }

    /// Bytes held on the heap by this summary (interned ids are shared and not counted).
    pub fn heap_size(&self) -> usize {
        let names =
            |list: &[Box<str>]| list.iter().map(|s| s.len()).sum::<usize>() + size_of_val(list);
        size_of_val(&*self.entries) + names(&self.malware) + names(&self.baseline_failures)
    }
}

/// The process-wide table of vulnerability ids. Ids are few (tens of thousands across a
/// fleet's images) and repeat across images, so each is stored once, for the life of the
/// process, and summaries refer to it by number. Readers take no lock: names live in
/// fixed segments of write-once slots, filled in order by writers (which serialise on a mutex
/// that only they take); adding an id costs O(1).
pub mod interner {
    use crate::hash::FastHash;
    use std::{
        collections::HashMap,
        sync::{
            Mutex, OnceLock,
            atomic::{AtomicUsize, Ordering},
        },
    };

    /// Ids the table holds at most (the packed entry's 27 bits).
    pub const CAPACITY: usize = 1 << 27;
    const SEGMENT: usize = 1 << 14;
    const SEGMENTS: usize = CAPACITY / SEGMENT;

    type Segment = Box<[OnceLock<&'static str>]>;

    struct Table {
        segments: Box<[OnceLock<Segment>]>,
        len: AtomicUsize,
        numbers: Mutex<HashMap<&'static str, u32, FastHash>>,
    }

    fn table() -> &'static Table {
        static TABLE: OnceLock<Table> = OnceLock::new();
        TABLE.get_or_init(|| Table {
            segments: (0..SEGMENTS).map(|_| OnceLock::new()).collect(),
            len: AtomicUsize::new(0),
            numbers: Mutex::new(HashMap::default()),
        })
    }

    /// The number of each id, in order, adding new ids (`None` past `CAPACITY`).
    pub fn intern_all<'a>(ids: impl Iterator<Item = &'a str>) -> Vec<Option<u32>> {
        let table = table();
        let mut numbers = table.numbers.lock().unwrap_or_else(|e| e.into_inner());
        ids.map(|id| {
            if let Some(&n) = numbers.get(id) {
                return Some(n);
            }
            let n = table.len.load(Ordering::Relaxed);
            if n >= CAPACITY {
                return None;
            }
            // Kept for the life of the process: summaries refer to it by number.
            let name: &'static str = Box::leak(id.into());
            let segment = table.segments[n / SEGMENT]
                .get_or_init(|| (0..SEGMENT).map(|_| OnceLock::new()).collect());
            let _ = segment[n % SEGMENT].set(name);
            // Published after the slot is set: a reader that sees the number finds the name.
            table.len.store(n + 1, Ordering::Release);
            numbers.insert(name, n as u32);
            Some(n as u32)
        })
        .collect()
    }

    /// The name of number `n`, without a lock.
    pub fn name(n: u32) -> Option<&'static str> {
        let n = n as usize;
        table().segments.get(n / SEGMENT)?.get()?[n % SEGMENT]
            .get()
            .copied()
    }

    /// Ids interned so far.
    pub fn len() -> usize {
        table().len.load(Ordering::Acquire)
    }
}

fn sorted_unique<'a>(names: impl IntoIterator<Item = &'a str>) -> Box<[Box<str>]> {
    let mut names: Vec<&str> = names.into_iter().collect();
    names.sort_unstable();
    names.dedup();
    names.into_iter().map(Box::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use Severity::{Critical, High, Low, Medium};

    fn mk_summary(vulnerabilities: &[(&str, Severity, bool)]) -> ScanSummary {
        ScanSummary::new(
            vulnerabilities.iter().map(|v| v.1).collect(),
            vulnerabilities.iter().copied(),
            ["Eicar-Signature", "Unix.Trojan.Mirai", "Eicar-Signature"],
            ["DS-0002"],
        )
    }

    #[test]
    fn vulnerabilities_are_deduplicated_keeping_the_worst_and_any_fix() {
        let summary = mk_summary(&[
            ("CVE-2", Low, false),
            ("CVE-1", Medium, false),
            ("CVE-2", High, false),
            ("CVE-1", Low, true),
            ("GHSA-x", Critical, false),
        ]);
        let got: Vec<_> = summary
            .vulnerabilities()
            .map(|v| (v.id, v.severity, v.fixable))
            .collect();
        assert_eq!(
            got,
            [
                ("CVE-1", Medium, true),
                ("CVE-2", High, false),
                ("GHSA-x", Critical, false)
            ]
        );
        assert_eq!(summary.counts(), SeverityCounts([0, 2, 1, 1, 1]));
        assert_eq!(
            summary.malware(),
            [Box::from("Eicar-Signature"), "Unix.Trojan.Mirai".into()]
        );
        assert_eq!(summary.baseline_failures(), [Box::from("DS-0002")]);
    }

    #[test]
    fn vulnerabilities_are_found_by_id() {
        let summary = mk_summary(&[("CVE-3", Low, true), ("CVE-1", High, false)]);
        assert_eq!(
            summary.vulnerability("CVE-3").map(|v| v.severity),
            Some(Low)
        );
        assert_eq!(
            summary.vulnerability("CVE-1").map(|v| v.fixable),
            Some(false)
        );
        assert_eq!(summary.vulnerability("CVE-2"), None);
        assert_eq!(summary.vulnerability(""), None);
        assert_eq!(ScanSummary::default().vulnerability("CVE-1"), None);
    }

    #[test]
    fn each_vulnerability_costs_four_bytes_and_ids_are_shared() {
        let one = ScanSummary::new(
            SeverityCounts::default(),
            [("CVE-2024-0001", High, true), ("CVE-2024-0002", Low, false)],
            [],
            [],
        );
        assert_eq!(one.heap_size(), 2 * 4);
        let before = interner::len();
        let other = ScanSummary::new(
            SeverityCounts::default(),
            [("CVE-2024-0002", Critical, true)],
            [],
            [],
        );
        assert_eq!(interner::len(), before, "a known id is not added again");
        assert_eq!(
            other
                .vulnerability("CVE-2024-0002")
                .map(|v| (v.severity, v.fixable)),
            Some((Critical, true))
        );
        assert_eq!(
            one.vulnerability("CVE-2024-0002")
                .map(|v| (v.severity, v.fixable)),
            Some((Low, false))
        );
    }

    #[test]
    fn entries_pack_severity_and_fix() {
        for severity in [Severity::Unknown, Low, Medium, High, Critical] {
            for fixable in [false, true] {
                let entry = Entry::pack(Entry::ID_MASK, severity, fixable);
                assert_eq!(
                    (
                        Entry::id(entry),
                        Entry::severity(entry),
                        Entry::fixable(entry)
                    ),
                    (Entry::ID_MASK, severity, fixable)
                );
            }
        }
    }
}
