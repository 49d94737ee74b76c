//! Settings of `tim serve`: flags beat `TIM_*` environment variables, which beat the TOML
//! file given with `--config`, which beats the defaults written here once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, FromArgMatches};
use serde::{Deserialize, Serialize};

use crate::model::ident::IdScheme;
use crate::session::limits::Rate;

#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// TOML file with settings (keys are the long flag names with `_` for `-`).
    #[arg(long, env = "TIM_CONFIG")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<PathBuf>,

    /// Address of the client listener (WebSocket `/tim`, HTTP `/tim2`).
    #[arg(long, env = "TIM_LISTEN", default_value = "0.0.0.0:20003")]
    pub listen: SocketAddr,

    /// Directory of the node's store and secret key.
    #[arg(long, env = "TIM_DATA_DIR", default_value = "./tim-data")]
    pub data_dir: PathBuf,

    /// File holding the 32-byte deployment secret (raw, or 64 hex digits). Default: `secret.key`
    /// in the data dir, created at first start with mode 0600.
    #[arg(long, env = "TIM_SECRET_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,

    /// Sync the write-ahead log before acknowledging a write (durable across crashes and power
    /// loss). Concurrent writes share one sync.
    #[arg(long, env = "TIM_SYNC", default_value_t = true, action = clap::ArgAction::Set)]
    pub sync: bool,

    /// Allowed `Origin` values for `/tim` and `/tim2` (comma separated). Empty: any. A request
    /// without an Origin header (a non-browser client) is always accepted.
    #[arg(long, env = "TIM_ORIGIN", value_delimiter = ',')]
    #[serde(default)]
    pub origin: Vec<String>,

    /// Largest frame (WebSocket message, reassembled big-data frame, or `/tim2` body) in bytes.
    #[arg(long, env = "TIM_MAX_FRAME", default_value_t = 8 << 20)]
    pub max_frame: usize,

    /// Inbound messages over 64 KiB received and handled at once on the node; a connection
    /// sending one more waits for a slot. Bounds the memory of large frames (a decoded frame
    /// takes at most about four times its size).
    #[arg(long, env = "TIM_LARGE_FRAMES", default_value_t = 8)]
    pub large_frames: usize,

    /// Seconds a connection holding a large-frame slot may take to deliver its message
    /// before it is closed.
    #[arg(long, env = "TIM_LARGE_FRAME_TIMEOUT", default_value_t = 60)]
    pub large_frame_timeout: u64,

    /// Seconds a connection may stay unauthenticated.
    #[arg(long, env = "TIM_AUTH_TIMEOUT", default_value_t = 10)]
    pub auth_timeout: u64,

    /// Seconds an authenticated session may go without a ping (type 13) before it is closed.
    #[arg(long, env = "TIM_PING_TIMEOUT", default_value_t = 600)]
    pub ping_timeout: u64,

    /// Seconds a login token (from `/tim2` type 15) stays valid. Tokens are single-use.
    #[arg(long, env = "TIM_TOKEN_TIMEOUT", default_value_t = 60)]
    pub token_timeout: u64,

    /// Most unexpired tokens held at once; past it, token requests get 5104 (heavy load).
    #[arg(long, env = "TIM_MAX_TOKENS", default_value_t = 100_000)]
    pub max_tokens: usize,

    /// Most concurrent sessions per account.
    #[arg(long, env = "TIM_DEVICE_LIMIT", default_value_t = 1)]
    pub device_limit: usize,

    /// Most concurrent sessions per account and device type (`termtyp`).
    #[arg(long, env = "TIM_DEVICETYPE_LIMIT", default_value_t = 1)]
    pub devicetype_limit: usize,

    /// Seconds since the account's previous login after which a login over a device limit
    /// closes the oldest session instead of failing with 4111.
    #[arg(long, env = "TIM_AUTH_MIN_UNIX", default_value_t = 10)]
    pub auth_min_unix: u64,

    /// Frames queued to a session, and frames awaiting its acks, before it is cut off as a
    /// slow reader (its undelivered messages then go to the offline queue).
    #[arg(long, env = "TIM_OUTBOUND_QUEUE", default_value_t = 256)]
    pub outbound_queue: usize,

    /// Bytes of encoded frames queued to a session before it counts as a slow reader (its
    /// pushes are then refused; best-effort stream frames are dropped). At least `max_frame`.
    #[arg(long, env = "TIM_OUTBOUND_BYTES", default_value_t = 16 << 20)]
    pub outbound_bytes: usize,

    /// Seconds to wait for a client's ack of a message or offline batch before re-sending.
    #[arg(long, env = "TIM_ACK_TIMEOUT", default_value_t = 10)]
    pub ack_timeout: u64,

    /// Sends of a message or offline batch to a session before it counts as not delivered.
    #[arg(long, env = "TIM_ACK_TRIES", default_value_t = 3)]
    pub ack_tries: u32,

    /// Seconds a write to a client socket may take before the session is closed.
    #[arg(long, env = "TIM_WRITE_TIMEOUT", default_value_t = 10)]
    pub write_timeout: u64,

    /// Serve the chat page for first-time users at `/` on the client listener.
    #[arg(long, env = "TIM_CHAT_PAGE", default_value_t = true, action = clap::ArgAction::Set)]
    pub chat_page: bool,

    /// Let users message anyone, not only mutual friends.
    #[arg(long, env = "TIM_MESSAGE_NOAUTH", default_value_t = false, action = clap::ArgAction::Set)]
    pub message_noauth: bool,

    /// Do not tell friends when a user's last session ends (the `offline=true` presence).
    #[arg(long, env = "TIM_PRESENCE_OFFLINE_BLOCK", default_value_t = false, action = clap::ArgAction::Set)]
    pub presence_offline_block: bool,

    /// Most entries in one user's offline queue; past it the oldest are dropped (and logged).
    #[arg(long, env = "TIM_OFFLINE_MAX_ENTRIES", default_value_t = 10_000)]
    pub offline_max_entries: usize,

    /// Seconds an entry may wait in an offline queue before it is dropped (and logged).
    #[arg(long, env = "TIM_OFFLINE_MAX_AGE", default_value_t = 30 * 24 * 3600)]
    pub offline_max_age: u64,

    /// Message-class frames (90–97) one connection may send per second, on average; 0: no limit.
    #[arg(long, env = "TIM_RATE_CONNECTION", default_value_t = 100)]
    pub rate_connection: u32,

    /// Message-class frames one connection may send at once after a quiet spell.
    #[arg(long, env = "TIM_BURST_CONNECTION", default_value_t = 200)]
    pub burst_connection: u32,

    /// Message-class frames all sessions of one account on this node may send per second; 0:
    /// no limit.
    #[arg(long, env = "TIM_RATE_ACCOUNT", default_value_t = 200)]
    pub rate_account: u32,

    /// Message-class frames all sessions of one account on this node may send at once after a
    /// quiet spell.
    #[arg(long, env = "TIM_BURST_ACCOUNT", default_value_t = 400)]
    pub burst_account: u32,

    /// Most authenticated connections on this node; a login past it gets 5104 and is closed.
    #[arg(long, env = "TIM_CONNECT_LIMIT", default_value_t = 100_000)]
    pub connect_limit: usize,

    /// Most members of one group.
    #[arg(long, env = "TIM_MAX_GROUP_MEMBERS", default_value_t = 5_000)]
    pub max_group_members: usize,

    /// Most groups one user may be a member of.
    #[arg(long, env = "TIM_MAX_GROUPS_PER_USER", default_value_t = 500)]
    pub max_groups_per_user: usize,

    /// Most friends one user may have.
    #[arg(long, env = "TIM_MAX_ROSTER", default_value_t = 5_000)]
    pub max_roster: usize,

    /// Seconds after its last push a virtual room without subscribers is removed.
    #[arg(long, env = "TIM_VROOM_IDLE", default_value_t = 300)]
    pub vroom_idle: u64,

    /// Most messages one history request (frame 21) returns.
    #[arg(long, env = "TIM_MAX_HISTORY_PAGE", default_value_t = 200)]
    pub max_history_page: usize,

    /// How account ids are derived from login names.
    #[arg(long, env = "TIM_NODE_IDS", value_enum, default_value_t = IdScheme::Keyed)]
    pub node_ids: IdScheme,

    /// Salt of the `tim` id scheme (TIM's `salt` setting).
    #[arg(long, env = "TIM_SALT", default_value = crate::model::ident::TIM_DEFAULT_SALT)]
    pub tim_salt: String,

    /// argon2id memory cost per password hash, in KiB.
    #[arg(long, env = "TIM_ARGON2_MEMORY_KIB", default_value_t = 19 * 1024)]
    pub argon2_memory_kib: u32,

    /// argon2id passes per password hash.
    #[arg(long, env = "TIM_ARGON2_PASSES", default_value_t = 2)]
    pub argon2_passes: u32,

    /// Password hashes computed at once (each holds its memory cost). 0: one per core.
    #[arg(long, env = "TIM_HASH_CONCURRENCY", default_value_t = 0)]
    pub hash_concurrency: usize,

    /// RocksDB block cache, in MiB.
    #[arg(long, env = "TIM_CACHE_MB", default_value_t = 64)]
    pub cache_mb: usize,

    /// Table files RocksDB keeps open.
    #[arg(long, env = "TIM_MAX_OPEN_FILES", default_value_t = 1024)]
    pub max_open_files: i32,

    /// Seconds sessions get to close at shutdown.
    #[arg(long, env = "TIM_SHUTDOWN_GRACE", default_value_t = 5)]
    pub shutdown_grace: u64,

    /// Gossip address (UDP) of this node; setting it makes the node a cluster member. Without
    /// it (and without `--seeds`) the node runs alone.
    #[arg(long, env = "TIM_GOSSIP_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gossip_listen: Option<SocketAddr>,

    /// Address of the admin listener (HTTP, for `tim export`/`tim import`), or `off`. Keep it
    /// on loopback or a private network: requests prove the deployment secret.
    #[arg(long, env = "TIM_ADMIN_LISTEN", default_value = "127.0.0.1:20002")]
    pub admin_listen: String,

    /// Node link address (TCP) of this node, for the other members' calls.
    #[arg(long, env = "TIM_RPC_LISTEN", default_value = "0.0.0.0:20005")]
    pub rpc_listen: SocketAddr,

    /// Gossip addresses (`host:port`, comma separated) of members to join through. A node
    /// without seeds that never held data founds a new cluster.
    #[arg(long, env = "TIM_SEEDS", value_delimiter = ',')]
    #[serde(default)]
    pub seeds: Vec<String>,

    /// The host (IP) other nodes reach this one at, when the listen addresses are not it
    /// (listening on 0.0.0.0, behind NAT, in a container).
    #[arg(long, env = "TIM_ADVERTISE_HOST")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise_host: Option<std::net::IpAddr>,

    /// The cluster's name: nodes of other clusters are refused.
    #[arg(long, env = "TIM_CLUSTER_ID", default_value = "tim")]
    pub cluster_id: String,

    /// This node's share of the slots relative to the others (1–1000).
    #[arg(long, env = "TIM_WEIGHT", default_value_t = 1)]
    pub weight: u16,

    /// Milliseconds between gossip rounds (a dead node is noticed after about ten).
    #[arg(long, env = "TIM_GOSSIP_INTERVAL_MS", default_value_t = 500)]
    pub gossip_interval_ms: u64,

    /// Milliseconds a member serves its slots after half of the members (itself counted) last
    /// answered it: cut off from the others for longer, it refuses every request for its
    /// slots (5102) until they answer again. `tim cluster remove` waits twice as long.
    #[arg(long, env = "TIM_LEASE_MS", default_value_t = 4000)]
    pub lease_ms: u64,

    /// Bytes per second this node sends when it hands slots to other nodes (all moves
    /// together; 0: unpaced). Clients' traffic goes first: a join never starves it.
    #[arg(long, env = "TIM_MIGRATION_RATE", default_value_t = 64 << 20)]
    pub migration_rate: u64,

    /// Slots this node hands over at once (1–64).
    #[arg(long, env = "TIM_MIGRATION_SLOTS", default_value_t = 4)]
    pub migration_slots: usize,

    /// On SIGTERM, hand every slot to the other members before stopping, as `tim cluster
    /// leave` does: the node leaves the cluster for good.
    #[arg(long, env = "TIM_DRAIN_ON_STOP")]
    #[serde(default)]
    pub drain_on_stop: bool,

    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `tim_engine=debug`.
    #[arg(long, env = "TIM_LOG", default_value = "info")]
    pub log: String,
}

/// A setting that is out of range, or a config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("setting `{field}` {problem}")]
    Invalid { field: &'static str, problem: &'static str },
}

impl ServeConfig {
    /// The settings from parsed arguments, with the config file (if any) under them.
    pub fn from_matches(matches: &ArgMatches) -> Result<Self, ConfigError> {
        let cfg = Self::from_arg_matches(matches)
            .map_err(|e| ConfigError::Parse { path: PathBuf::new(), message: e.to_string() })?;
        let cfg = match cfg.config.clone() {
            Some(path) => cfg.under_file(&path, matches)?,
            None => cfg,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn under_file(self, path: &Path, matches: &ArgMatches) -> Result<Self, ConfigError> {
        let parse = |message: String| ConfigError::Parse { path: path.to_owned(), message };
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let file: toml::Table = text.parse().map_err(|e: toml::de::Error| parse(e.to_string()))?;
        let mut merged = toml::Table::try_from(&self).map_err(|e| parse(e.to_string()))?;
        let known = <Self as clap::Args>::augment_args(clap::Command::new("tim"));
        for (key, value) in file {
            // Unknown keys go into the table too, where deserializing names them.
            let is_arg = known.get_arguments().any(|a| a.get_id() == key.as_str());
            let explicit = is_arg
                && matches!(matches.value_source(&key), Some(ValueSource::CommandLine | ValueSource::EnvVariable));
            if !explicit {
                merged.insert(key, value);
            }
        }
        merged.try_into().map_err(|e: toml::de::Error| parse(e.to_string()))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, problem| Err(ConfigError::Invalid { field, problem });
        if self.device_limit == 0 {
            return invalid("device_limit", "must be at least 1");
        }
        if admin_listen_addr(&self.admin_listen).is_err() {
            return invalid("admin_listen", "must be `off` or an address (host:port)");
        }
        if !(1..=1000).contains(&self.weight) {
            return invalid("weight", "must be between 1 and 1000");
        }
        if self.gossip_interval_ms < 10 || self.gossip_interval_ms > 60_000 {
            return invalid("gossip_interval_ms", "must be between 10 and 60000");
        }
        if !(1000..=300_000).contains(&self.lease_ms) {
            return invalid("lease_ms", "must be between 1000 and 300000");
        }
        if !(1..=64).contains(&self.migration_slots) {
            return invalid("migration_slots", "must be between 1 and 64");
        }
        if self.cluster_id.is_empty() || self.cluster_id.len() > 256 {
            return invalid("cluster_id", "must have 1 to 256 bytes");
        }
        if !self.seeds.is_empty() && self.gossip_listen.is_none() {
            return invalid("seeds", "needs --gossip-listen (a member gossips)");
        }
        if self.devicetype_limit == 0 {
            return invalid("devicetype_limit", "must be at least 1");
        }
        if self.max_frame < 64 || self.max_frame > 1 << 30 {
            return invalid("max_frame", "must be between 64 bytes and 1 GiB");
        }
        if self.large_frames == 0 {
            return invalid("large_frames", "must be at least 1");
        }
        if self.large_frame_timeout == 0 {
            return invalid("large_frame_timeout", "must be at least 1");
        }
        if self.connect_limit == 0 {
            return invalid("connect_limit", "must be at least 1");
        }
        for (field, value) in [
            ("max_group_members", self.max_group_members),
            ("max_groups_per_user", self.max_groups_per_user),
            ("max_roster", self.max_roster),
        ] {
            if !(1..=crate::services::pairs::MAX_LIST).contains(&value) {
                return invalid(field, "must be between 1 and 10000 (the longest list a reply carries)");
            }
        }
        if (self.rate_connection > 0 && self.burst_connection == 0)
            || (self.rate_account > 0 && self.burst_account == 0)
        {
            return invalid("burst_connection/burst_account", "must be at least 1 when the rate is limited");
        }
        if self.offline_max_entries == 0 {
            return invalid("offline_max_entries", "must be at least 1");
        }
        if self.outbound_bytes < self.max_frame {
            return invalid("outbound_bytes", "must be at least max_frame");
        }
        if self.outbound_queue == 0 {
            return invalid("outbound_queue", "must be at least 1");
        }
        if self.ack_timeout == 0 || self.ack_tries == 0 {
            return invalid("ack_timeout/ack_tries", "must be at least 1");
        }
        if self.auth_timeout == 0 || self.ping_timeout == 0 || self.token_timeout == 0 {
            return invalid("auth_timeout/ping_timeout/token_timeout", "must be at least 1 second");
        }
        if self.argon2_memory_kib < 8 || self.argon2_passes == 0 {
            return invalid("argon2_memory_kib/argon2_passes", "are below argon2's minimum");
        }
        Ok(())
    }

    pub fn auth_timeout(&self) -> Duration {
        Duration::from_secs(self.auth_timeout)
    }
    pub fn ping_timeout(&self) -> Duration {
        Duration::from_secs(self.ping_timeout)
    }
    pub fn connection_rate(&self) -> Rate {
        Rate { per_second: self.rate_connection, burst: self.burst_connection }
    }

    pub fn account_rate(&self) -> Rate {
        Rate { per_second: self.rate_account, burst: self.burst_account }
    }

    pub fn ack_timeout(&self) -> Duration {
        Duration::from_secs(self.ack_timeout)
    }
    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.write_timeout)
    }
}

/// The admin listener's address from `--admin-listen` (`off`: none).
pub fn admin_listen_addr(setting: &str) -> Result<Option<SocketAddr>, String> {
    match setting {
        "off" => Ok(None),
        addr => addr.parse().map(Some).map_err(|e| format!("{addr:?} is not `off` or an address: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeConfig,
    }

    fn load(args: &[&str]) -> Result<ServeConfig, ConfigError> {
        let matches = Cli::command().try_get_matches_from(args).unwrap();
        ServeConfig::from_matches(&matches)
    }

    #[test]
    fn defaults_work_alone() {
        let cfg = load(&["tim"]).unwrap();
        assert_eq!(cfg.listen.to_string(), "0.0.0.0:20003");
        assert_eq!(cfg.data_dir, PathBuf::from("./tim-data"));
        assert!(cfg.sync);
        assert_eq!(cfg.max_frame, 8 << 20);
    }

    #[test]
    fn flags_beat_the_file_which_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tim.toml");
        std::fs::write(&file, "device_limit = 3\nmax_frame = 4096\nsync = false\n").unwrap();
        let path = file.to_str().unwrap();
        let cfg = load(&["tim", "--config", path, "--max-frame", "2048"]).unwrap();
        assert_eq!(cfg.device_limit, 3, "file beats default");
        assert_eq!(cfg.max_frame, 2048, "flag beats file");
        assert!(!cfg.sync);
        std::fs::write(&file, "no_such_setting = 1\n").unwrap();
        assert!(matches!(load(&["tim", "--config", path]), Err(ConfigError::Parse { .. })));
        assert!(matches!(
            load(&["tim", "--device-limit", "0"]),
            Err(ConfigError::Invalid { field: "device_limit", .. })
        ));
    }
}
