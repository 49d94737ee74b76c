//! A replica's log of a slot: the entries after a base, which stands for everything applied
//! and dropped from the log (or received as a snapshot).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::ballot::{Ballot, Index, Position};
use super::conf::Conf;

/// What an entry does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind<P> {
    /// The first entry of a primary: committing it commits everything before it.
    Start,
    /// A configuration, in force from the moment it is appended.
    Conf(Conf),
    /// The writes of the slot's data.
    Data(P),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry<P> {
    pub ballot: Ballot,
    pub kind: Kind<P>,
}

/// Entries `base.index + 1 ..= last`, the first at the front.
#[derive(Debug, Clone)]
pub struct Log<P> {
    base: Position,
    /// The configuration in force at the base.
    base_conf: Conf,
    entries: VecDeque<Entry<P>>,
    /// The indexes of the configuration entries, in order (a few at most): the configuration
    /// in force is looked up on every commit and tick.
    confs: Vec<Index>,
}

impl<P: Clone> Log<P> {
    /// An empty log at `base` (a slot's first configuration, or a snapshot).
    pub fn new(base: Position, base_conf: Conf) -> Self {
        Self { base, base_conf, entries: VecDeque::new(), confs: Vec::new() }
    }

    pub fn base(&self) -> Position {
        self.base
    }

    pub fn base_conf(&self) -> &Conf {
        &self.base_conf
    }

    pub fn last(&self) -> Position {
        match self.entries.back() {
            Some(entry) => Position { ballot: entry.ballot, index: self.base.index + self.entries.len() as Index },
            None => self.base,
        }
    }

    fn offset(&self, index: Index) -> Option<usize> {
        index.checked_sub(self.base.index + 1).and_then(|k| usize::try_from(k).ok())
    }

    pub fn entry(&self, index: Index) -> Option<&Entry<P>> {
        self.entries.get(self.offset(index)?)
    }

    /// The ballot of the entry at `index`: the base's at the base, `None` below it or past
    /// the end.
    pub fn ballot_at(&self, index: Index) -> Option<Ballot> {
        if index == self.base.index {
            return Some(self.base.ballot);
        }
        self.entry(index).map(|e| e.ballot)
    }

    /// Whether the log holds the position (the base counts).
    pub fn holds(&self, at: Position) -> bool {
        self.ballot_at(at.index) == Some(at.ballot)
    }

    /// Up to `max` entries from `from`, with their indexes.
    pub fn entries_from(&self, from: Index, max: usize) -> Vec<Entry<P>> {
        let Some(start) = self.offset(from) else { return Vec::new() };
        self.entries.iter().skip(start).take(max).cloned().collect()
    }

    pub fn push(&mut self, entry: Entry<P>) -> Index {
        let is_conf = matches!(entry.kind, Kind::Conf(_));
        self.entries.push_back(entry);
        let index = self.last().index;
        if is_conf {
            self.confs.push(index);
        }
        index
    }

    /// Drops the entries from `index` on.
    pub fn truncate_from(&mut self, index: Index) {
        if let Some(keep) = self.offset(index) {
            self.entries.truncate(keep);
            self.confs.retain(|at| *at < index);
        }
    }

    /// The last index whose entry came under `ballot` or an earlier one: where a log that
    /// ends under `ballot` may still agree with this one. `None` when the base is later.
    pub fn end_of(&self, ballot: Ballot) -> Option<Index> {
        if self.base.ballot > ballot {
            return None;
        }
        let later = self.entries.iter().position(|e| e.ballot > ballot).unwrap_or(self.entries.len());
        Some(self.base.index + later as Index)
    }

    /// Where this log may still agree with one that holds another entry at `index`: the
    /// entry before the run of entries of `index`'s ballot (the base at the lowest).
    pub fn before_run(&self, index: Index) -> Position {
        let Some(ballot) = self.ballot_at(index) else { return self.last() };
        let mut start = index;
        while start > self.base.index + 1 && self.ballot_at(start - 1) == Some(ballot) {
            start -= 1;
        }
        let at = (start - 1).max(self.base.index);
        Position { ballot: self.ballot_at(at).unwrap_or(self.base.ballot), index: at }
    }

    /// The configuration in force: the last one in the log, else the base's.
    pub fn conf(&self) -> &Conf {
        self.conf_at(self.last().index)
    }

    /// The configuration in force after the entry at `index` (at least the base).
    pub fn conf_at(&self, index: Index) -> &Conf {
        self.confs
            .iter()
            .rev()
            .filter(|at| **at <= index)
            .find_map(|at| match self.entry(*at).map(|e| &e.kind) {
                Some(Kind::Conf(conf)) => Some(conf),
                _ => None,
            })
            .unwrap_or(&self.base_conf)
    }

    /// The index of the configuration in force (the base's counts as the base).
    pub fn conf_index(&self) -> Index {
        self.confs.last().copied().unwrap_or(self.base.index)
    }

    /// Drops the entries up to `index` (applied, and no replica needs them): the base moves
    /// there. Nothing happens past the end.
    pub fn compact(&mut self, index: Index) {
        let Some(ballot) = self.ballot_at(index).filter(|_| index > self.base.index) else { return };
        self.base_conf = self.conf_at(index).clone();
        let drop = self.offset(index).map_or(0, |k| k + 1);
        self.entries.drain(..drop);
        self.confs.retain(|at| *at > index);
        self.base = Position { ballot, index };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::NodeId;

    fn ballot(epoch: u64) -> Ballot {
        Ballot { epoch, node: NodeId(1) }
    }

    fn log(ballots: &[u64]) -> Log<u32> {
        let conf = Conf::new(vec![NodeId(1)], vec![]).unwrap();
        let mut log = Log::new(Position::START, conf);
        for (i, b) in ballots.iter().enumerate() {
            log.push(Entry { ballot: ballot(*b), kind: Kind::Data(i as u32) });
        }
        log
    }

    #[test]
    fn positions_and_ballot_ends() {
        let log = log(&[1, 1, 2, 4, 4]);
        assert_eq!(log.last(), Position { ballot: ballot(4), index: 5 });
        assert!(log.holds(Position { ballot: ballot(2), index: 3 }));
        assert!(!log.holds(Position { ballot: ballot(1), index: 3 }));
        assert_eq!(log.end_of(ballot(1)), Some(2));
        assert_eq!(log.end_of(ballot(3)), Some(3), "a ballot this log never had ends where the next began");
        assert_eq!(log.end_of(ballot(9)), Some(5));
        assert_eq!(log.before_run(5), Position { ballot: ballot(2), index: 3 });
        assert_eq!(log.before_run(2), Position::START);
    }

    #[test]
    fn compaction_keeps_positions_and_configuration() {
        let mut log = log(&[1, 1]);
        let conf = Conf::new(vec![NodeId(1), NodeId(2)], vec![]).unwrap();
        log.push(Entry { ballot: ballot(2), kind: Kind::Conf(conf.clone()) });
        log.push(Entry { ballot: ballot(2), kind: Kind::Data(9) });
        log.compact(3);
        assert_eq!(log.base(), Position { ballot: ballot(2), index: 3 });
        assert_eq!(log.base_conf(), &conf);
        assert_eq!(log.conf(), &conf);
        assert_eq!(log.entries_from(4, 10).len(), 1);
        assert_eq!(log.end_of(ballot(1)), None, "entries of ballot 1 are gone");
        log.truncate_from(4);
        assert_eq!(log.last(), Position { ballot: ballot(2), index: 3 });
    }
}
