//! The servers a test runs against: one node, or a three-node cluster whose nodes take the
//! test's users in turn (user 0 on the first node, user 1 on the second, …), so every
//! operation between users crosses nodes, and each user's data lives wherever its slot is.

use crate::cluster::TestCluster;
use crate::node::TestNode;

pub enum Servers {
    One(TestNode),
    Three(TestCluster),
}

impl Servers {
    pub fn one(args: &[&str]) -> Servers {
        Servers::One(TestNode::start(args))
    }

    pub fn three(args: &[&str]) -> Servers {
        Servers::Three(TestCluster::start(3, args))
    }

    /// The node user number `i` of the test connects to.
    pub fn at(&self, i: usize) -> &TestNode {
        match self {
            Servers::One(node) => node,
            Servers::Three(cluster) => &cluster.nodes[i % cluster.nodes.len()],
        }
    }

    /// The deployment secret's file.
    pub fn secret_file(&self) -> String {
        match self {
            Servers::One(node) => node.dir.path().join("data").join("secret.key").display().to_string(),
            Servers::Three(cluster) => cluster.secret_file(),
        }
    }

    /// A token to read any node's `/metrics` with.
    pub async fn read_token(&self) -> String {
        crate::admin::read_token(self.at(0).admin.expect("an admin listener"), &self.secret_file()).await
    }

    /// The logs of every node.
    pub fn log(&self) -> String {
        match self {
            Servers::One(node) => node.log(),
            Servers::Three(cluster) => cluster.nodes.iter().map(TestNode::log).collect::<Vec<_>>().join("\n"),
        }
    }
}

/// Declares a test that runs once against one node (`one_node`) and once against a
/// three-node cluster (`three_nodes`), with the same `serve` arguments on every node:
///
/// ```ignore
/// topology_test!(async fn name(servers, &["--device-limit", "2"]) { ... });
/// ```
macro_rules! topology_test {
    ($(#[doc = $doc:literal])* async fn $name:ident($servers:ident, $args:expr) $body:block) => {
        $(#[doc = $doc])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn run($servers: crate::topology::Servers) $body

            #[tokio::test]
            async fn one_node() {
                run(crate::topology::Servers::one($args)).await
            }

            #[tokio::test]
            async fn three_nodes() {
                run(crate::topology::Servers::three($args)).await
            }
        }
    };
}
pub(crate) use topology_test;
