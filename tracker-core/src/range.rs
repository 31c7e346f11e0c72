//! Byte ranges of a disk, and sets of them.

use std::collections::BTreeMap;

/// A half-open range of bytes `[start, end)` from the start of the whole disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    /// `[start, end)`; an inverted range is empty.
    pub fn new(start: u64, end: u64) -> Self {
        Self {
            start,
            end: end.max(start),
        }
    }

    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The overlap of two ranges (empty if they do not overlap).
    pub fn intersect(&self, other: &ByteRange) -> ByteRange {
        ByteRange::new(self.start.max(other.start), self.end.min(other.end))
    }

    /// The smallest range of whole `grain`-sized units that covers this one.
    pub fn widen_to(&self, grain: u64) -> ByteRange {
        ByteRange::new(self.start / grain * grain, self.end.div_ceil(grain) * grain)
    }
}

/// A set of disjoint, non-adjacent byte ranges (adjacent ones merge).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    /// start -> end
    ranges: BTreeMap<u64, u64>,
}

impl RangeSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Number of disjoint ranges held.
    pub fn count(&self) -> usize {
        self.ranges.len()
    }

    /// Total bytes covered.
    pub fn bytes(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s).sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = ByteRange> + '_ {
        self.ranges.iter().map(|(&s, &e)| ByteRange::new(s, e))
    }

    /// Adds `r`, merging with what it overlaps or touches.
    pub fn insert(&mut self, r: ByteRange) {
        if r.is_empty() {
            return;
        }
        let (mut start, mut end) = (r.start, r.end);
        // The range starting at or before `start` may reach it.
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back()
            && e >= start
        {
            start = s;
            end = end.max(e);
        }
        let absorbed: Vec<u64> = self.ranges.range(start..=end).map(|(&s, _)| s).collect();
        for s in absorbed {
            let e = self.ranges.remove(&s).expect("key just listed");
            end = end.max(e);
        }
        self.ranges.insert(start, end);
    }

    /// Removes `r` from the set.
    pub fn remove(&mut self, r: ByteRange) {
        if r.is_empty() {
            return;
        }
        let mut touched: Vec<(u64, u64)> = Vec::new();
        if let Some((&s, &e)) = self.ranges.range(..r.start).next_back()
            && e > r.start
        {
            touched.push((s, e));
        }
        touched.extend(self.ranges.range(r.start..r.end).map(|(&s, &e)| (s, e)));
        for (s, e) in touched {
            self.ranges.remove(&s);
            if s < r.start {
                self.ranges.insert(s, r.start);
            }
            if e > r.end {
                self.ranges.insert(r.end, e);
            }
        }
    }

    /// Whether any byte of `r` is in the set.
    pub fn overlaps(&self, r: ByteRange) -> bool {
        if r.is_empty() {
            return false;
        }
        if let Some((_, &e)) = self.ranges.range(..=r.start).next_back()
            && e > r.start
        {
            return true;
        }
        self.ranges.range(r.start..r.end).next().is_some()
    }

    /// The end of the range containing byte `pos`, if any.
    pub fn end_of_range_at(&self, pos: u64) -> Option<u64> {
        self.ranges
            .range(..=pos)
            .next_back()
            .filter(|(_, e)| **e > pos)
            .map(|(_, e)| *e)
    }

    /// The parts of the set inside `r`.
    pub fn within(&self, r: ByteRange) -> Vec<ByteRange> {
        let mut out = Vec::new();
        if let Some((&s, &e)) = self.ranges.range(..r.start).next_back() {
            let x = ByteRange::new(s, e).intersect(&r);
            if !x.is_empty() {
                out.push(x);
            }
        }
        for (&s, &e) in self.ranges.range(r.start..r.end) {
            out.push(ByteRange::new(s, e).intersect(&r));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SPACE: u64 = 256;

    fn model_of(set: &RangeSet) -> Vec<bool> {
        let mut m = vec![false; usize::try_from(SPACE).unwrap()];
        for r in set.iter() {
            for b in r.start..r.end {
                m[usize::try_from(b).unwrap()] = true;
            }
        }
        m
    }

    proptest! {
        #[test]
        fn range_set_matches_a_bitmap(ops in prop::collection::vec((any::<bool>(), 0..SPACE, 0..SPACE), 1..60)) {
            let mut set = RangeSet::new();
            let mut model = vec![false; usize::try_from(SPACE).unwrap()];
            for (add, a, b) in ops {
                let r = ByteRange::new(a.min(b), a.max(b));
                if add { set.insert(r) } else { set.remove(r) }
                for x in r.start..r.end {
                    model[usize::try_from(x).unwrap()] = add;
                }
                prop_assert_eq!(&model_of(&set), &model);
                // Disjoint and non-adjacent: the representation is canonical.
                let v: Vec<_> = set.iter().collect();
                for w in v.windows(2) {
                    prop_assert!(w[0].end < w[1].start, "{:?}", v);
                }
                let probe = ByteRange::new(a.min(b), a.max(b) + 3);
                let expect = (probe.start..probe.end.min(SPACE)).any(|x| model[usize::try_from(x).unwrap()]);
                prop_assert_eq!(set.overlaps(probe), expect);
                let inside: u64 = set.within(probe).iter().map(ByteRange::len).sum();
                prop_assert_eq!(inside, (probe.start..probe.end.min(SPACE)).filter(|&x| model[usize::try_from(x).unwrap()]).count() as u64);
            }
        }
    }
}
