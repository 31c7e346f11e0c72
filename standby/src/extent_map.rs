//! A map from non-overlapping byte ranges to values, where inserting a range replaces
//! whatever it overlaps: "the newest record wins" for rebuild and for retention.

use std::collections::BTreeMap;

/// Non-overlapping half-open ranges `[start, end)` with a value each.
#[derive(Debug, Clone)]
pub struct ExtentMap<T> {
    /// start → (end, value); ranges never overlap and are never empty.
    ranges: BTreeMap<u64, (u64, T)>,
}

impl<T> Default for ExtentMap<T> {
    fn default() -> Self {
        Self {
            ranges: BTreeMap::new(),
        }
    }
}

impl<T: Copy> ExtentMap<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `[start, end)` to `value`, replacing what it overlaps. An empty range is a no-op.
    pub fn insert(&mut self, start: u64, end: u64, value: T) {
        if start >= end {
            return;
        }
        // A range that begins before `start` and reaches into it is cut at `start`
        // (and its part after `end`, if any, kept).
        if let Some((&s, &(e, v))) = self.ranges.range(..start).next_back()
            && e > start
        {
            self.ranges.insert(s, (start, v));
            if e > end {
                self.ranges.insert(end, (e, v));
            }
        }
        // Ranges that begin inside `[start, end)` go; a tail past `end` stays.
        while let Some((&s, &(e, v))) = self.ranges.range(start..end).next() {
            self.ranges.remove(&s);
            if e > end {
                self.ranges.insert(end, (e, v));
            }
        }
        self.ranges.insert(start, (end, value));
    }

    /// Every range in order, as `(start, end, value)`.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64, T)> + '_ {
        self.ranges.iter().map(|(&s, &(e, v))| (s, e, v))
    }

    /// Number of ranges.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn newest_insert_wins_like_a_byte_array(
            ops in proptest::collection::vec((0usize..200, 0usize..60), 0..60)
        ) {
            let mut map = ExtentMap::new();
            let mut model = [None::<usize>; 300];
            for (i, &(start, len)) in ops.iter().enumerate() {
                map.insert(start as u64, (start + len) as u64, i);
                for slot in &mut model[start..start + len] {
                    *slot = Some(i);
                }
            }
            let mut seen = [None::<usize>; 300];
            let mut last_end = 0;
            for (s, e, v) in map.iter() {
                prop_assert!(s < e, "empty range {s}..{e}");
                prop_assert!(s >= last_end, "ranges overlap at {s}");
                last_end = e;
                for slot in &mut seen[usize::try_from(s).unwrap()..usize::try_from(e).unwrap()] {
                    *slot = Some(v);
                }
            }
            prop_assert_eq!(&seen[..], &model[..], "map differs from the byte model");
        }
    }
}
