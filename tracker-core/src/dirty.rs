//! The dirty map of one disk: which 4 KiB grains changed since they were last shipped,
//! and the generation of each change, so that the replicator clears only what it read
//! after the last write (DESIGN.md I1).
//!
//! Representation: an ordered map of 16 MiB chunks (4096 grains) that holds only chunks
//! with something dirty. A chunk is either
//! - **full**: every grain dirty, with one generation (the newest mark) and one "dirty
//!   since" (the oldest): what a full copy, a catch-up or a large write leaves, 16 MiB in
//!   a few bytes; or
//! - **words**: a bitmap in 64-grain words (256 KiB), each word carrying the generation
//!   of the newest mark that touched it and the generation at which it last went from
//!   clean to dirty (how old its oldest unshipped change may be: the RPO lag).
//!
//! A mark that covers a whole chunk makes it full; a partial mark or clear of a full chunk
//! spells it out into words, each with the full chunk's generations. (Words filled piece by
//! piece are not folded back: their generations differ, and one generation for the chunk
//! would make a write to one word count as a write to all of them.) Marking and clearing cost a map lookup and a few word
//! operations, whatever the disk's size or how scattered the writes are (this runs twice
//! per tracked write).
//!
//! Invariants:
//! - A grain is dirty from its first mark until a [`DirtyMap::clear_if_unchanged`] whose
//!   generation is not older than the generation of the grain's word (or full chunk).
//! - Generations only ever merge upwards (a word or full chunk keeps the newest generation
//!   of what it holds) and "dirty since" downwards, so a mark anywhere in a word keeps the
//!   whole word from being cleared by an older read, and the lag is never under-stated: at
//!   worst an extra re-read, never a lost write.
//!
//! Memory: a full chunk costs one map entry (~64 bytes with the tree's share: 4 MiB for a
//! fully dirty 1 TiB disk, as in a full copy); a chunk spelt out costs 1.5 KiB more (96 MiB for a 1 TiB disk
//! dirty sparsely but everywhere); nothing for clean regions.

use crate::range::{ByteRange, RangeSet};
use std::collections::BTreeMap;

/// The tracking granularity, in bytes.
pub const GRAIN: u64 = 4096;
const WORD_GRAINS: u64 = 64;
const CHUNK_WORDS: usize = 64;
const CHUNK_GRAINS: u64 = WORD_GRAINS * CHUNK_WORDS as u64;

/// A point in the order of changes. Every mark takes a new, larger one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Generation(pub u64);

impl Generation {
    /// The next generation.
    pub fn bump(&mut self) -> Generation {
        self.0 += 1;
        *self
    }
}

/// The dirty grains of one 16 MiB chunk with something dirty.
#[derive(Debug, Clone)]
enum Chunk {
    /// Every grain dirty: the newest generation that marked any of them, and the oldest
    /// at which any became dirty.
    Full {
        generation: Generation,
        since: Generation,
    },
    Words(Box<Words>),
}

#[derive(Debug, Clone)]
struct Words {
    bits: [u64; CHUNK_WORDS],
    generations: [Generation; CHUNK_WORDS],
    /// Per word with dirty bits: the generation at which it went from clean to dirty.
    dirty_since: [Generation; CHUNK_WORDS],
    dirty_grains: u32,
}

impl Chunk {
    fn clean() -> Self {
        Chunk::Words(Box::new(Words {
            bits: [0; CHUNK_WORDS],
            generations: [Generation::default(); CHUNK_WORDS],
            dirty_since: [Generation::default(); CHUNK_WORDS],
            dirty_grains: 0,
        }))
    }

    /// The chunk as words, spelling a full one out (each word takes its generations).
    fn words_mut(&mut self) -> &mut Words {
        if let Chunk::Full { generation, since } = *self {
            *self = Chunk::Words(Box::new(Words {
                bits: [u64::MAX; CHUNK_WORDS],
                generations: [generation; CHUNK_WORDS],
                dirty_since: [since; CHUNK_WORDS],
                dirty_grains: u32::try_from(CHUNK_GRAINS).expect("4096"),
            }));
        }
        match self {
            Chunk::Words(words) => words,
            Chunk::Full { .. } => unreachable!("spelt out above"),
        }
    }

    /// Per word: its dirty bits, newest generation and dirty-since.
    fn words(&self) -> impl Iterator<Item = (u64, Generation, Generation)> + '_ {
        (0..CHUNK_WORDS).map(move |w| match self {
            Chunk::Full { generation, since } => (u64::MAX, *generation, *since),
            Chunk::Words(words) => (words.bits[w], words.generations[w], words.dirty_since[w]),
        })
    }

    fn dirty_grains(&self) -> u64 {
        match self {
            Chunk::Full { .. } => CHUNK_GRAINS,
            Chunk::Words(w) => u64::from(w.dirty_grains),
        }
    }
}

/// Bits `from..to` of a word (`to` ≤ 64).
fn bit_span(from: u64, to: u64) -> u64 {
    let high = if to >= 64 { u64::MAX } else { (1u64 << to) - 1 };
    high & !((1u64 << from) - 1)
}

/// The (word index in chunk, bit range) pieces of grains `[first, end)` inside chunk `c`.
fn words_of(c: u64, first: u64, end: u64) -> impl Iterator<Item = (usize, u64)> {
    let lo = first.max(c * CHUNK_GRAINS);
    let hi = end.min((c + 1) * CHUNK_GRAINS);
    let mut g = lo;
    std::iter::from_fn(move || {
        if g >= hi {
            return None;
        }
        let word = (g - c * CHUNK_GRAINS) / WORD_GRAINS;
        let word_start = c * CHUNK_GRAINS + word * WORD_GRAINS;
        let to = hi.min(word_start + WORD_GRAINS);
        let mask = bit_span(g - word_start, to - word_start);
        g = to;
        Some((usize::try_from(word).expect("< CHUNK_WORDS"), mask))
    })
}

/// The runs of set bits of a word, as (first bit, end bit).
fn runs_of(mut bits: u64) -> impl Iterator<Item = (u64, u64)> {
    let mut at = 0u64;
    std::iter::from_fn(move || {
        if bits == 0 {
            return None;
        }
        let skip = u64::from(bits.trailing_zeros());
        bits >>= skip; // skip < 64: bits is not zero
        let len = u64::from(bits.trailing_ones());
        let start = at + skip;
        at = start + len;
        bits = if len >= 64 { 0 } else { bits >> len };
        Some((start, start + len))
    })
}

/// Whether grains `[first, end)` cover the whole of chunk `c`.
fn covers(c: u64, first: u64, end: u64) -> bool {
    first <= c * CHUNK_GRAINS && end >= (c + 1) * CHUNK_GRAINS
}

/// A disk's dirty grains with their generations.
#[derive(Debug, Clone, Default)]
pub struct DirtyMap {
    chunks: BTreeMap<u64, Chunk>,
    bytes: u64,
}

impl DirtyMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// Dirty bytes (a multiple of [`GRAIN`]).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Heap bytes held (what grows with the disk's dirty spread): each chunk's entry in
    /// the map (key, value and a share of the tree's node), and the words of those spelt
    /// out.
    pub fn memory_bytes(&self) -> usize {
        let entry = 2 * (std::mem::size_of::<u64>() + std::mem::size_of::<Chunk>());
        let spelt = self
            .chunks
            .values()
            .filter(|c| matches!(c, Chunk::Words(_)))
            .count();
        self.chunks.len() * entry + spelt * std::mem::size_of::<Words>()
    }

    fn grain_of(&self, g: u64) -> Option<(bool, Generation)> {
        let chunk = self.chunks.get(&(g / CHUNK_GRAINS))?;
        Some(match chunk {
            Chunk::Full { generation, .. } => (true, *generation),
            Chunk::Words(w) => {
                let word = usize::try_from((g % CHUNK_GRAINS) / WORD_GRAINS).expect("< 64");
                (
                    w.bits[word] >> (g % WORD_GRAINS) & 1 == 1,
                    w.generations[word],
                )
            }
        })
    }

    /// Every maximal run of dirty grains, in disk order, with the newest generation of
    /// the words it spans: a fully dirty disk is one run, found in a step per chunk.
    pub fn iter(&self) -> impl Iterator<Item = (ByteRange, Generation)> + '_ {
        let mut pieces = self.chunks.iter().flat_map(|(&c, chunk)| {
            let (full, words) = match chunk {
                Chunk::Full { generation, .. } => (Some(*generation), None),
                Chunk::Words(w) => (None, Some(w)),
            };
            let base = c * CHUNK_GRAINS;
            full.map(|g| (base, base + CHUNK_GRAINS, g))
                .into_iter()
                .chain(words.into_iter().flat_map(move |w| {
                    (0..CHUNK_WORDS).flat_map(move |i| {
                        let at = base + i as u64 * WORD_GRAINS;
                        runs_of(w.bits[i]).map(move |(s, e)| (at + s, at + e, w.generations[i]))
                    })
                }))
        });
        let mut pending: Option<(u64, u64, Generation)> = None;
        std::iter::from_fn(move || {
            loop {
                match (pieces.next(), pending) {
                    (Some((s, e, g)), Some((ps, pe, pg))) if s == pe => {
                        pending = Some((ps, e, pg.max(g)))
                    }
                    (Some(next), Some((ps, pe, pg))) => {
                        pending = Some(next);
                        return Some((ByteRange::new(ps * GRAIN, pe * GRAIN), pg));
                    }
                    (Some(next), None) => pending = Some(next),
                    (None, Some((ps, pe, pg))) => {
                        pending = None;
                        return Some((ByteRange::new(ps * GRAIN, pe * GRAIN), pg));
                    }
                    (None, None) => return None,
                }
            }
        })
    }

    /// Marks `range` (widened to whole grains) dirty at `generation`.
    pub fn mark(&mut self, range: ByteRange, generation: Generation) {
        let r = range.widen_to(GRAIN);
        let (first, end) = (r.start / GRAIN, r.end / GRAIN);
        if first >= end {
            return;
        }
        for c in first / CHUNK_GRAINS..=(end - 1) / CHUNK_GRAINS {
            let whole = covers(c, first, end);
            let before = self.chunks.get(&c).map_or(0, Chunk::dirty_grains);
            let chunk = self.chunks.entry(c).or_insert_with(|| {
                if whole {
                    Chunk::Full {
                        generation,
                        since: generation,
                    }
                } else {
                    Chunk::clean()
                }
            });
            if whole {
                let (newest, oldest) = chunk
                    .words()
                    .filter(|(bits, ..)| *bits != 0)
                    .fold((generation, generation), |(n, o), (_, g, since)| {
                        (n.max(g), o.min(since))
                    });
                *chunk = Chunk::Full {
                    generation: newest,
                    since: oldest,
                };
            } else {
                let words = chunk.words_mut();
                for (w, mask) in words_of(c, first, end) {
                    let newly = (mask & !words.bits[w]).count_ones();
                    if words.bits[w] == 0 {
                        words.dirty_since[w] = generation;
                    }
                    words.bits[w] |= mask;
                    words.generations[w] = words.generations[w].max(generation);
                    words.dirty_grains += newly;
                }
            }
            self.bytes += (chunk.dirty_grains() - before) * GRAIN;
        }
    }

    /// The oldest generation at which anything still dirty became dirty (conservative:
    /// per word, a word that stays dirty keeps the generation it first became dirty at),
    /// or `None` when nothing is dirty.
    pub fn dirty_since(&self) -> Option<Generation> {
        self.chunks
            .values()
            .filter_map(|c| match c {
                Chunk::Full { since, .. } => Some(*since),
                Chunk::Words(_) => c
                    .words()
                    .filter(|(bits, ..)| *bits != 0)
                    .map(|(.., since)| since)
                    .min(),
            })
            .min()
    }

    /// Dirty bytes in words last marked at or before `generation`: what is left of a
    /// full pass that marked everything at `generation` (grains marked again since count
    /// as newer writes, not as the pass's remainder).
    pub fn bytes_not_newer_than(&self, generation: Generation) -> u64 {
        self.chunks
            .values()
            .map(|c| match c {
                Chunk::Full { generation: g, .. } if *g <= generation => CHUNK_GRAINS,
                Chunk::Full { .. } => 0,
                Chunk::Words(_) => c
                    .words()
                    .filter(|(_, g, _)| *g <= generation)
                    .map(|(bits, ..)| u64::from(bits.count_ones()))
                    .sum(),
            })
            .sum::<u64>()
            * GRAIN
    }

    /// Clears the grains of `range` whose word's generation is not newer than
    /// `read_at`: nothing marked them since the caller picked them. Returns the bytes
    /// cleared.
    pub fn clear_if_unchanged(&mut self, range: ByteRange, read_at: Generation) -> u64 {
        let r = range.widen_to(GRAIN);
        let (first, end) = (r.start / GRAIN, r.end / GRAIN);
        if first >= end {
            return 0;
        }
        let before = self.bytes;
        for c in first / CHUNK_GRAINS..=(end - 1) / CHUNK_GRAINS {
            let Some(chunk) = self.chunks.get_mut(&c) else {
                continue;
            };
            let grains = chunk.dirty_grains();
            match chunk {
                Chunk::Full { generation, .. } if *generation > read_at => continue,
                Chunk::Full { .. } if covers(c, first, end) => {
                    self.chunks.remove(&c);
                    self.bytes -= grains * GRAIN;
                    continue;
                }
                _ => {}
            }
            let words = chunk.words_mut();
            for (w, mask) in words_of(c, first, end) {
                if words.generations[w] > read_at {
                    continue;
                }
                words.dirty_grains -= (words.bits[w] & mask).count_ones();
                words.bits[w] &= !mask;
            }
            let left = chunk.dirty_grains();
            self.bytes -= (grains - left) * GRAIN;
            if left == 0 {
                self.chunks.remove(&c);
            }
        }
        before - self.bytes
    }

    /// The first dirty grain at or after grain `from` (wrapping to the start).
    fn next_dirty_grain(&self, from: u64) -> Option<u64> {
        let after = self.chunks.range(from / CHUNK_GRAINS..);
        let wrapped = self.chunks.range(..=from / CHUNK_GRAINS);
        for (pass, (&c, chunk)) in after.map(|x| (0, x)).chain(wrapped.map(|x| (1, x))) {
            let low = if pass == 0 {
                from.max(c * CHUNK_GRAINS)
            } else {
                c * CHUNK_GRAINS
            };
            let Chunk::Words(words) = chunk else {
                return Some(low);
            };
            for (w, mask) in words_of(c, low, (c + 1) * CHUNK_GRAINS) {
                let hit = words.bits[w] & mask;
                if hit != 0 {
                    return Some(
                        c * CHUNK_GRAINS + w as u64 * WORD_GRAINS + u64::from(hit.trailing_zeros()),
                    );
                }
            }
        }
        None
    }

    /// The first dirty range at or after byte `from` (wrapping to the start of the disk)
    /// that avoids every range in `excluded`, whole grains, at most `max_len` bytes, with
    /// the newest generation of the words it spans.
    pub fn next_readable(
        &self,
        from: u64,
        max_len: u64,
        excluded: &[&RangeSet],
    ) -> Option<(ByteRange, Generation)> {
        let max_grains = (max_len / GRAIN).max(1);
        let is_excluded = |g: u64| {
            excluded
                .iter()
                .any(|set| set.overlaps(ByteRange::new(g * GRAIN, (g + 1) * GRAIN)))
        };
        let start_grain = from / GRAIN;
        let mut at = start_grain;
        let mut wrapped = false;
        loop {
            let g = self.next_dirty_grain(at)?;
            if g < at {
                if wrapped {
                    return None;
                }
                wrapped = true;
            }
            if wrapped && g >= start_grain {
                return None;
            }
            if is_excluded(g) {
                // Jump past the excluded range (a large discard in flight spans many grains).
                at = excluded
                    .iter()
                    .filter_map(|set| set.end_of_range_at(g * GRAIN))
                    .max()
                    .map_or(g + 1, |end| end.div_ceil(GRAIN).max(g + 1));
                continue;
            }
            // Extend the run while dirty, not excluded, and under the length cap.
            let mut end = g + 1;
            let mut generation = self.grain_of(g).map(|(_, gen_)| gen_).unwrap_or_default();
            while end - g < max_grains {
                match self.grain_of(end) {
                    Some((true, gen_)) if !is_excluded(end) => {
                        generation = generation.max(gen_);
                        end += 1;
                    }
                    _ => break,
                }
            }
            return Some((ByteRange::new(g * GRAIN, end * GRAIN), generation));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remainder_of_a_pass_excludes_grains_written_since() {
        let mut m = DirtyMap::new();
        m.mark(ByteRange::new(0, 64 << 20), Generation(1));
        assert_eq!(m.bytes_not_newer_than(Generation(1)), 64 << 20);
        // A write in a later word: that word no longer counts as the pass's remainder.
        m.mark(ByteRange::new(32 << 20, (32 << 20) + 4096), Generation(2));
        assert_eq!(
            m.bytes_not_newer_than(Generation(1)),
            (64 << 20) - (256 << 10)
        );
        m.clear_if_unchanged(ByteRange::new(0, 16 << 20), Generation(1));
        assert_eq!(
            m.bytes_not_newer_than(Generation(1)),
            (48 << 20) - (256 << 10)
        );
        assert_eq!(m.bytes_not_newer_than(Generation(0)), 0);
    }
    use proptest::prelude::*;

    /// Per grain: dirty, and the generation of its last mark.
    #[derive(Clone)]
    struct Model(Vec<Option<Generation>>);

    /// Runs `ops` (mark, pick, clear the last pick; at a byte, for a length) on a map of
    /// `grains` grains and on a per-grain model. Clearing never drops a grain marked after
    /// the read generation (I1), picked ranges are dirty, grain-aligned and outside the
    /// excluded set, and the lag is never under-stated.
    fn against_the_model(ops: Vec<(u8, u64, u64)>, grains: u64) -> Result<(), TestCaseError> {
        let mut map = DirtyMap::new();
        // (Room for a mark that starts near the end and runs past it.)
        let mut model = Model(vec![None; usize::try_from(2 * grains).unwrap() + 40]);
        // Per grain: the generation it last became dirty at.
        let mut since = vec![Generation::default(); model.0.len()];
        let mut generation = Generation::default();
        let mut picked: Option<(ByteRange, Generation)> = None;
        let mut excluded = RangeSet::new();
        excluded.insert(ByteRange::new(10 * GRAIN + 100, 12 * GRAIN));
        for (op, at, len) in ops {
            match op {
                0 => {
                    let r = ByteRange::new(at, at + len);
                    let g = generation.bump();
                    map.mark(r, g);
                    let w = r.widen_to(GRAIN);
                    for grain in w.start / GRAIN..w.end / GRAIN {
                        let i = usize::try_from(grain).unwrap();
                        if model.0[i].is_none() {
                            since[i] = g;
                        }
                        model.0[i] = Some(g);
                    }
                }
                1 => {
                    picked = map.next_readable(at, len, &[&excluded]);
                    if let Some((r, g)) = picked {
                        prop_assert!(r.start % GRAIN == 0 && r.end % GRAIN == 0 && !r.is_empty());
                        prop_assert!(r.len() <= len.max(GRAIN));
                        prop_assert!(
                            !excluded.overlaps(r),
                            "picked {:?} inside the excluded set",
                            r
                        );
                        for grain in r.start / GRAIN..r.end / GRAIN {
                            // (A grain the model already cleaned may still be dirty in the
                            // map: merging is conservative. Never the other way round.)
                            let mg = model.0[usize::try_from(grain).unwrap()];
                            prop_assert!(
                                mg.is_none_or(|mg| mg <= g),
                                "picked with an older generation than a write in it"
                            );
                        }
                    }
                }
                _ => {
                    if let Some((r, g)) = picked.take() {
                        map.clear_if_unchanged(r, g);
                        for grain in r.start / GRAIN..r.end / GRAIN {
                            let slot = &mut model.0[usize::try_from(grain).unwrap()];
                            if slot.is_some_and(|mg| mg <= g) {
                                *slot = None;
                            }
                        }
                    }
                }
            }
            // Every grain the model holds dirty is dirty in the map (never lost).
            let mut dirty = vec![false; model.0.len()];
            for (r, _) in map.iter() {
                prop_assert!(r.start % GRAIN == 0 && r.end % GRAIN == 0);
                for grain in r.start / GRAIN..r.end / GRAIN {
                    dirty[usize::try_from(grain).unwrap()] = true;
                }
            }
            for (grain, m) in model.0.iter().enumerate() {
                prop_assert!(!m.is_some() || dirty[grain], "grain {} lost", grain);
            }
            prop_assert_eq!(
                map.bytes(),
                dirty.iter().filter(|d| **d).count() as u64 * GRAIN
            );
            // The age of the oldest unshipped change is never under-stated.
            let oldest = model
                .0
                .iter()
                .zip(&since)
                .filter(|(m, _)| m.is_some())
                .map(|(_, s)| *s)
                .min();
            match (map.dirty_since(), oldest) {
                (Some(got), Some(want)) => prop_assert!(
                    got <= want,
                    "dirty since {:?}, a change since {:?}",
                    got,
                    want
                ),
                (got, None) => prop_assert_eq!(got.is_some(), !map.is_empty()),
                (None, Some(want)) => {
                    prop_assert!(false, "nothing dirty, yet a change since {:?}", want)
                }
            }
        }
        Ok(())
    }

    proptest! {
        /// Words: marks and clears inside and across 256 KiB words of one chunk.
        #[test]
        fn dirty_map_never_clears_a_newer_write(
            ops in prop::collection::vec((0u8..3, 0..64 * GRAIN, 1..20 * GRAIN), 1..80)
        ) {
            against_the_model(ops, 64)?;
        }

        /// Whole chunks: marks and clears that cover chunks (making them full), cut into
        /// full ones (spelling them out), and fill them piece by piece.
        #[test]
        fn whole_chunks_made_full_and_spelt_out_never_lose_a_write(
            ops in prop::collection::vec(
                (0u8..3, 0..3 * CHUNK_GRAINS * GRAIN, prop::sample::select(vec![
                    GRAIN, 5 * GRAIN, WORD_GRAINS * GRAIN, (CHUNK_GRAINS - 1) * GRAIN,
                    CHUNK_GRAINS * GRAIN, 2 * CHUNK_GRAINS * GRAIN,
                ])),
                1..60,
            )
        ) {
            against_the_model(ops, 3 * CHUNK_GRAINS)?;
        }
    }

    #[test]
    fn a_mark_after_the_pick_keeps_the_range_dirty() {
        let mut map = DirtyMap::new();
        let mut g = Generation::default();
        map.mark(ByteRange::new(0, 8192), g.bump());
        let (r, read_at) = map.next_readable(0, 1 << 20, &[]).unwrap();
        assert_eq!(r, ByteRange::new(0, 8192));
        map.mark(ByteRange::new(4096, 4097), g.bump()); // written while being read
        assert_eq!(
            map.clear_if_unchanged(r, read_at),
            0,
            "a newer write was cleared"
        );
        let (r, read_at) = map.next_readable(0, 1 << 20, &[]).unwrap();
        assert_eq!(map.clear_if_unchanged(r, read_at), 8192);
        assert!(map.is_empty());
    }

    #[test]
    fn a_large_disk_dirty_everywhere_stays_small() {
        // 1% of a 1 TiB disk in scattered 4 KiB writes: every 16 MiB chunk is touched.
        let mut map = DirtyMap::new();
        let mut g = Generation::default();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let grains = (1u64 << 40) / GRAIN;
        for _ in 0..grains / 100 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let grain = x % grains;
            map.mark(
                ByteRange::new(grain * GRAIN, grain * GRAIN + GRAIN),
                g.bump(),
            );
        }
        assert!(map.bytes() > (1u64 << 40) / 101, "{}", map.bytes());
        let mib = map.memory_bytes() >> 20;
        assert!(mib <= 112, "1% of 1 TiB dirty costs {mib} MiB");
    }

    #[test]
    fn a_full_copy_of_16_tib_is_a_few_mib_and_one_run() {
        // A full copy marks the whole disk; the agent then ships it in 1 MiB reads.
        let size = 16u64 << 40;
        let mut map = DirtyMap::new();
        let mut g = Generation::default();
        map.mark(ByteRange::new(0, size), g.bump());
        assert_eq!(map.bytes(), size);
        let mib = map.memory_bytes() >> 20;
        assert!(mib <= 64, "16 TiB fully dirty costs {mib} MiB");
        let runs: Vec<_> = map.iter().collect();
        assert_eq!(runs, vec![(ByteRange::new(0, size), Generation(1))]);
        // A write in the middle spells out one chunk only, and the first read clears.
        map.mark(ByteRange::new(size / 2, size / 2 + 4096), g.bump());
        let (r, read_at) = map.next_readable(0, 1 << 20, &[]).unwrap();
        assert_eq!((r, read_at), (ByteRange::new(0, 1 << 20), Generation(1)));
        assert_eq!(map.clear_if_unchanged(r, read_at), 1 << 20);
        assert!(map.memory_bytes() >> 20 <= mib + 1);
        assert_eq!(
            map.iter().count(),
            1,
            "still one run: the write is inside it"
        );
    }
}
