//! A set of series ids, for passes over every segment's index (which
//! series the data holds, which the series log names): a bit each below a
//! bound, where the index's ids are dense enough, a hash set above it.

use std::collections::HashSet;

use crate::model::SeriesId;
use crate::series::SeriesIndex;

pub(super) struct IdSet {
    bits: Vec<u64>,
    beyond: HashSet<SeriesId>,
}

impl IdSet {
    /// The bound for the ids `series` gives: above every one, but no more
    /// than 64 bits a series (plus some), whatever a log names.
    pub fn bound_for(series: &SeriesIndex) -> usize {
        let bound = usize::try_from(series.id_bound()).unwrap_or(usize::MAX);
        bound.min(64 * (series.len() + 1024))
    }

    pub fn below(bound: usize) -> IdSet {
        IdSet {
            bits: vec![0; bound.div_ceil(64)],
            beyond: HashSet::new(),
        }
    }

    pub fn extend(&mut self, ids: impl Iterator<Item = SeriesId>) {
        for id in ids {
            match self.bits.get_mut(id as usize / 64) {
                Some(word) => *word |= 1 << (id % 64),
                None => {
                    self.beyond.insert(id);
                }
            }
        }
    }

    pub fn holds(&self, id: SeriesId) -> bool {
        match self.bits.get(id as usize / 64) {
            Some(word) => word & (1 << (id % 64)) != 0,
            None => self.beyond.contains(&id),
        }
    }
}
