//! A slot's replica configuration: who votes, who is being brought in, and what a quorum is.

use serde::{Deserialize, Serialize};

use crate::placement::NodeId;

/// The replicas of a slot. It changes only through the slot's log, in two steps: from
/// `voters` to a joint configuration (`next` set), where every decision needs a majority of
/// both sets, then to `next` alone. Any two majorities of consecutive configurations meet, so
/// two primaries never commit under configurations that do not overlap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conf {
    /// Counts the changes.
    pub gen: u64,
    /// Sorted, without repeats.
    pub voters: Vec<NodeId>,
    /// The voters a change moves to: while set, the configuration is joint.
    pub next: Option<Vec<NodeId>>,
    /// Replicas that receive the log but neither vote nor count for a commit (being built).
    pub learners: Vec<NodeId>,
}

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfError {
    #[error("a configuration needs at least one voter")]
    NoVoters,
    #[error("node {0} is both a voter and a learner")]
    VoterAndLearner(NodeId),
}

fn sorted(mut nodes: Vec<NodeId>) -> Vec<NodeId> {
    nodes.sort_unstable();
    nodes.dedup();
    nodes
}

fn majority(set: &[NodeId], has: &impl Fn(NodeId) -> bool) -> bool {
    set.iter().filter(|n| has(**n)).count() * 2 > set.len()
}

impl Conf {
    /// A first configuration of `voters` and `learners`.
    pub fn new(voters: Vec<NodeId>, learners: Vec<NodeId>) -> Result<Conf, ConfError> {
        let conf = Conf { gen: 1, voters: sorted(voters), next: None, learners: sorted(learners) };
        conf.check()?;
        Ok(conf)
    }

    fn check(&self) -> Result<(), ConfError> {
        if self.voters.is_empty() || self.next.as_ref().is_some_and(Vec::is_empty) {
            return Err(ConfError::NoVoters);
        }
        match self.learners.iter().find(|l| self.is_voter(**l)) {
            Some(both) => Err(ConfError::VoterAndLearner(*both)),
            None => Ok(()),
        }
    }

    /// The joint configuration on the way to `voters` (with `learners` beside).
    pub fn towards(&self, voters: Vec<NodeId>, learners: Vec<NodeId>) -> Result<Conf, ConfError> {
        let joint = Conf {
            gen: self.gen + 1,
            voters: self.voters.clone(),
            next: Some(sorted(voters)),
            learners: sorted(learners),
        };
        joint.check()?;
        Ok(joint)
    }

    /// The configuration a joint one ends in; `None` when it is not joint.
    pub fn settled(&self) -> Option<Conf> {
        let next = self.next.clone()?;
        Some(Conf { gen: self.gen + 1, voters: next, next: None, learners: self.learners.clone() })
    }

    pub fn is_joint(&self) -> bool {
        self.next.is_some()
    }

    /// Whether `node` votes (in either set of a joint configuration).
    pub fn is_voter(&self, node: NodeId) -> bool {
        self.voters.contains(&node) || self.next.as_ref().is_some_and(|n| n.contains(&node))
    }

    /// Every replica: voters of both sets, then learners, each once.
    pub fn members(&self) -> Vec<NodeId> {
        let mut all: Vec<NodeId> =
            self.voters.iter().chain(self.next.iter().flatten()).chain(&self.learners).copied().collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Whether the nodes `has` accepts form a quorum: a majority of the voters, and of the
    /// next voters while joint.
    pub fn is_quorum(&self, has: impl Fn(NodeId) -> bool) -> bool {
        majority(&self.voters, &has) && self.next.as_ref().is_none_or(|next| majority(next, &has))
    }

    /// The highest value that a quorum of voters has reached, given each voter's (`reached`).
    pub fn quorum_value(&self, reached: impl Fn(NodeId) -> u64) -> u64 {
        let mut values: Vec<u64> = self.voters.iter().chain(self.next.iter().flatten()).map(|n| reached(*n)).collect();
        values.sort_unstable_by(|a, b| b.cmp(a));
        values.dedup();
        values.into_iter().find(|v| self.is_quorum(|n| reached(n) >= *v)).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(ids: &[u64]) -> Vec<NodeId> {
        ids.iter().map(|i| NodeId(*i)).collect()
    }

    #[test]
    fn a_joint_quorum_needs_both_majorities() {
        let abc = Conf::new(nodes(&[1, 2, 3]), vec![]).unwrap();
        let joint = abc.towards(nodes(&[1, 2, 4]), vec![]).unwrap();
        // A and C are a majority of ABC but not of ABD.
        assert!(abc.is_quorum(|n| n == NodeId(1) || n == NodeId(3)));
        assert!(!joint.is_quorum(|n| n == NodeId(1) || n == NodeId(3)));
        assert!(joint.is_quorum(|n| n == NodeId(1) || n == NodeId(2)));
        let settled = joint.settled().unwrap();
        assert_eq!(settled.voters, nodes(&[1, 2, 4]));
        assert!(settled.is_quorum(|n| n == NodeId(2) || n == NodeId(4)));
    }

    #[test]
    fn the_quorum_value_is_what_a_majority_reached() {
        let conf = Conf::new(nodes(&[1, 2, 3]), nodes(&[9])).unwrap();
        let reached = |n: NodeId| match n.0 {
            1 => 10,
            2 => 7,
            3 => 3,
            _ => 100,
        };
        assert_eq!(conf.quorum_value(reached), 7, "learners do not count");
        let joint = conf.towards(nodes(&[3, 4, 5]), vec![]).unwrap();
        let reached_now = |n: NodeId| match n.0 {
            4 => 5,
            5 => 1,
            _ => reached(n),
        };
        // 7 is reached by 1 and 2 (old set) but only 3 is by two of 3, 4, 5.
        assert_eq!(joint.quorum_value(reached_now), 3);
    }

    #[test]
    fn a_voter_is_not_a_learner_too() {
        assert_eq!(Conf::new(nodes(&[1]), nodes(&[1])), Err(ConfError::VoterAndLearner(NodeId(1))));
        assert_eq!(Conf::new(vec![], vec![]), Err(ConfError::NoVoters));
    }
}
