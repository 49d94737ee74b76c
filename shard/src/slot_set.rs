//! A set of slots, one bit each: 512 bytes for every slot of a cluster, compared and
//! subtracted a word at a time. Code that follows the owned slots looks at all of them
//! whenever one moves, thousands of times while a cluster forms.

use tim_kv::Slot;

use crate::SLOTS;

const WORDS: usize = SLOTS as usize / 64;

#[derive(Clone, PartialEq, Eq)]
pub struct SlotSet([u64; WORDS]);

impl Default for SlotSet {
    fn default() -> Self {
        Self([0; WORDS])
    }
}

impl SlotSet {
    /// Adds `slot` (`in_set`) or removes it; a slot past [`SLOTS`] is not a slot of the
    /// cluster and is ignored.
    pub fn put(&mut self, slot: Slot, in_set: bool) {
        if let Some(word) = self.0.get_mut(usize::from(slot.0 / 64)) {
            let bit = 1 << (slot.0 % 64);
            if in_set {
                *word |= bit;
            } else {
                *word &= !bit;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.0.iter().map(|word| word.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|word| *word == 0)
    }

    /// The slots of the set, in order.
    pub fn iter(&self) -> impl Iterator<Item = Slot> + '_ {
        slots_of(self.0.iter().copied())
    }

    /// The set as words of 64 slots each, for a message.
    pub fn to_words(&self) -> Vec<u64> {
        self.0.to_vec()
    }

    /// A set from words of 64 slots each; words past the slots of a cluster are ignored.
    pub fn from_words(words: &[u64]) -> Self {
        let mut set = Self::default();
        for (mine, word) in set.0.iter_mut().zip(words) {
            *mine = *word;
        }
        set
    }

    /// The slots of `self` that `other` lacks, in order.
    pub fn difference<'a>(&'a self, other: &'a SlotSet) -> impl Iterator<Item = Slot> + 'a {
        slots_of(self.0.iter().zip(other.0.iter()).map(|(mine, theirs)| mine & !theirs))
    }
}

/// The slots whose bits are set in `words` (word `i` holds slots `64 i ..`), in order.
fn slots_of(words: impl Iterator<Item = u64>) -> impl Iterator<Item = Slot> {
    words.enumerate().flat_map(|(i, word)| {
        let mut left = word;
        std::iter::from_fn(move || {
            if left == 0 {
                return None;
            }
            let bit = left.trailing_zeros();
            left &= left - 1;
            Some(Slot(i as u16 * 64 + bit as u16))
        })
    })
}

impl FromIterator<Slot> for SlotSet {
    fn from_iter<I: IntoIterator<Item = Slot>>(slots: I) -> Self {
        let mut set = Self::default();
        for slot in slots {
            set.put(slot, true);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn difference_lists_the_slots_one_set_lacks() {
        let a: SlotSet = [0, 1, 63, 64, 700, SLOTS - 1].into_iter().map(Slot).collect();
        let b: SlotSet = [1, 64, 701].into_iter().map(Slot).collect();
        assert_eq!(a.difference(&b).collect::<Vec<_>>(), [0, 63, 700, SLOTS - 1].map(Slot));
        assert_eq!(b.difference(&a).collect::<Vec<_>>(), [Slot(701)]);
        assert_eq!((a.len(), b.len()), (6, 3));
        assert!(SlotSet::default().is_empty() && !b.is_empty());
        let mut c = b.clone();
        c.put(Slot(64), false);
        assert_eq!(c.difference(&SlotSet::default()).collect::<Vec<_>>(), [Slot(1), Slot(701)]);
        assert_eq!(a.iter().collect::<Vec<_>>(), [0, 1, 63, 64, 700, SLOTS - 1].map(Slot));
        assert!(SlotSet::from_words(&a.to_words()) == a);
        let mut outside = SlotSet::default();
        outside.put(Slot(SLOTS), true);
        assert!(outside.is_empty());
    }
}
