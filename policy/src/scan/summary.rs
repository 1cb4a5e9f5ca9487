//! What an agent keeps of each image's scan: enough to evaluate every image rule (severity
//! thresholds, fixable-only, named ids, malware, baseline failures) and nothing else. Agents
//! hold one per image for 100,000 images, so ids live in one string per image and each
//! vulnerability costs 8 bytes plus its id text, with no allocation per id.

use super::SeverityCounts;
use crate::Severity;

/// The per-image scan result a policy is evaluated against.
///
/// Vulnerabilities are deduplicated by id (the highest severity wins, fixable if any
/// instance is) and sorted by id; `counts` keeps the scanner's per-package totals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanSummary {
    counts: SeverityCounts,
    /// Every vulnerability id, concatenated in `entries` order.
    ids: Box<str>,
    entries: Box<[Entry]>,
    malware: Box<[Box<str>]>,
    baseline_failures: Box<[Box<str>]>,
}

/// One vulnerability: its id is `ids[previous end..end]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    end: u32,
    severity: Severity,
    fixable: bool,
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
        let mut ids = String::with_capacity(merged.iter().map(|m| m.0.len()).sum());
        let mut entries = Vec::with_capacity(merged.len());
        for (id, severity, fixable) in merged {
            // Offsets are u32: ids past 4 GiB (no report under the limit holds that many)
            // are left out rather than wrapped.
            let Ok(end) = u32::try_from(ids.len() + id.len()) else {
                break;
            };
            ids.push_str(id);
            entries.push(Entry {
                end,
                severity,
                fixable,
            });
        }
        Self {
            counts,
            ids: ids.into_boxed_str(),
            entries: entries.into_boxed_slice(),
            malware: sorted_unique(malware),
            baseline_failures: sorted_unique(baseline_failures),
        }
    }

    /// Vulnerabilities per severity, one per (vulnerability, package) as the scanner counted.
    pub fn counts(&self) -> SeverityCounts {
        self.counts
    }

    /// Distinct vulnerabilities, sorted by id.
    pub fn vulnerabilities(&self) -> impl ExactSizeIterator<Item = SummaryVulnerability<'_>> {
        (0..self.entries.len()).map(|i| self.entry(i))
    }

    /// The vulnerability with this id, for policies that block or ignore named ids.
    pub fn vulnerability(&self, id: &str) -> Option<SummaryVulnerability<'_>> {
        let (mut low, mut high) = (0, self.entries.len());
        while low < high {
            let mid = low + (high - low) / 2;
            match self.id(mid).cmp(id) {
                std::cmp::Ordering::Less => low = mid + 1,
                std::cmp::Ordering::Greater => high = mid,
                std::cmp::Ordering::Equal => return Some(self.entry(mid)),
            }
        }
        None
    }

    /// Signatures of the malicious files found, sorted, without duplicates.
    pub fn malware(&self) -> &[Box<str>] {
        &self.malware
    }

    /// Ids of the failed baseline checks, sorted, without duplicates.
    pub fn baseline_failures(&self) -> &[Box<str>] {
        &self.baseline_failures
    }

    /// Bytes held on the heap, for an agent's cache-size metrics.
    pub fn heap_size(&self) -> usize {
        let names =
            |list: &[Box<str>]| list.iter().map(|s| s.len()).sum::<usize>() + size_of_val(list);
        self.ids.len()
            + size_of_val(&*self.entries)
            + names(&self.malware)
            + names(&self.baseline_failures)
    }

    fn id(&self, i: usize) -> &str {
        let start = i
            .checked_sub(1)
            .map_or(0, |previous| self.entries[previous].end as usize);
        self.ids
            .get(start..self.entries[i].end as usize)
            .unwrap_or_default()
    }

    fn entry(&self, i: usize) -> SummaryVulnerability<'_> {
        let Entry {
            severity, fixable, ..
        } = self.entries[i];
        SummaryVulnerability {
            id: self.id(i),
            severity,
            fixable,
        }
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
    fn each_vulnerability_costs_eight_bytes_plus_its_id() {
        assert_eq!(size_of::<Entry>(), 8);
        let summary = ScanSummary::new(
            SeverityCounts::default(),
            [("CVE-2024-0001", High, true), ("CVE-2024-0002", Low, false)],
            [],
            [],
        );
        assert_eq!(summary.heap_size(), 2 * 13 + 2 * 8);
    }
}
