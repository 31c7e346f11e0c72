//! Recovery points: every barrier record in a server's log is a point — id, seq, time,
//! consistent or not, scheduled or manual — until retention drops it. "latest" is not
//! stored: it is the log's last seq, whatever that is when asked.
//!
//! The catalogue persists only what retention dropped (by barrier seq, which is unique
//! and never reused, unlike a point id an agent might repeat), so a dropped point stays
//! dropped even while its barrier is still in a segment awaiting cleaning.

use crate::index::{Entry, EntryKind};
use ferry_wire::message::PointKind;
use ferry_wire::{PointId, Seq};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// A retained recovery point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    pub id: PointId,
    /// Records with seq ≤ this belong to the point.
    pub seq: Seq,
    pub unix_time_ms: u64,
    pub consistent: bool,
    pub kind: PointKind,
}

/// Which points retention has dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    /// Barrier seqs of dropped points.
    dropped: BTreeSet<Seq>,
}

impl Catalog {
    /// The retained points among `entries` (sorted by seq), oldest first.
    pub fn points(&self, entries: &[Entry]) -> Vec<Point> {
        entries
            .iter()
            .filter_map(|e| match e.what {
                EntryKind::Barrier {
                    point,
                    kind,
                    consistent,
                    unix_time_ms,
                } if !self.is_dropped(e.seq) => Some(Point {
                    id: point,
                    seq: e.seq,
                    unix_time_ms,
                    consistent,
                    kind,
                }),
                _ => None,
            })
            .collect()
    }

    pub fn is_dropped(&self, barrier_seq: Seq) -> bool {
        self.dropped.contains(&barrier_seq)
    }

    /// Marks the points with these barrier seqs dropped.
    pub fn drop_points(&mut self, barrier_seqs: &[Seq]) {
        self.dropped.extend(barrier_seqs.iter().copied());
    }
}

/// What a user may ask to rebuild. Written as text — a point id or `latest` — on the
/// command line and in JSON (serde goes through [`Display`](std::fmt::Display) and
/// [`FromStr`](std::str::FromStr)), so it is parsed once where it comes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointSelector {
    Latest,
    Id(PointId),
}

impl std::str::FromStr for PointSelector {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "latest" {
            return Ok(PointSelector::Latest);
        }
        s.parse()
            .map(|n| PointSelector::Id(PointId::new(n)))
            .map_err(|_| {
                format!(
                    "{s:?} is not a point id (a number, as `ferry point list` shows) or \"latest\""
                )
            })
    }
}

impl std::fmt::Display for PointSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PointSelector::Latest => f.write_str("latest"),
            PointSelector::Id(id) => write!(f, "{}", id.get()),
        }
    }
}

impl Serialize for PointSelector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PointSelector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The seq a selector stands for: the newest retained point with that id, or the last
/// seq for "latest". `None` when no such point is retained.
pub fn resolve(points: &[Point], last_seq: Seq, selector: PointSelector) -> Option<Seq> {
    match selector {
        PointSelector::Latest => Some(last_seq),
        PointSelector::Id(id) => points.iter().rev().find(|p| p.id == id).map(|p| p.seq),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_selector_is_the_same_text_in_json_as_on_the_command_line() {
        for (selector, json) in [
            (PointSelector::Latest, "\"latest\""),
            (
                PointSelector::Id(PointId::new(1795533480000)),
                "\"1795533480000\"",
            ),
        ] {
            let written = serde_json::to_string(&selector).expect("serializes");
            assert_eq!(written, json);
            let read: PointSelector = serde_json::from_str(json).expect("deserializes");
            assert_eq!(read, selector);
            assert_eq!(
                json.trim_matches('"').parse::<PointSelector>(),
                Ok(selector)
            );
        }
        for bad in ["\"yesterday\"", "\"\"", "5", "null"] {
            let err = serde_json::from_str::<PointSelector>(bad);
            assert!(err.is_err(), "{bad} must not decode as a point: {err:?}");
        }
        let err = serde_json::from_str::<PointSelector>("\"yesterday\"")
            .expect_err("not a point")
            .to_string();
        assert!(
            err.contains("is not a point id"),
            "the refusal says why: {err}"
        );
    }

    #[test]
    fn the_catalogue_reads_and_writes_the_json_it_always_has() {
        let golden = r#"{"dropped":[3,5]}"#;
        let read: Catalog = serde_json::from_str(golden).expect("the golden catalogue reads");
        assert!(read.is_dropped(Seq::new(5)) && !read.is_dropped(Seq::new(4)));
        assert_eq!(
            serde_json::to_string(&read).expect("serializes"),
            golden,
            "the catalogue is written as it was read"
        );
    }
}
