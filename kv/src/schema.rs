//! Table definitions: the logical schema the engine declares and the store persists.

/// How a column is indexed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexKind {
    None,
    /// Equality index; many rows may share a value.
    Plain,
    /// Equality index that refuses a second row with the same value in the same slot.
    Unique,
}

/// One column of a table.
#[derive(Debug, Clone, Copy)]
pub struct ColumnDef {
    pub name: &'static str,
    pub index: IndexKind,
    /// Stored encrypted (AES-256-GCM); a sealed column cannot be indexed.
    pub sealed: bool,
}

impl ColumnDef {
    pub const fn plain(name: &'static str) -> Self {
        Self { name, index: IndexKind::None, sealed: false }
    }
    pub const fn indexed(name: &'static str) -> Self {
        Self { name, index: IndexKind::Plain, sealed: false }
    }
    pub const fn unique(name: &'static str) -> Self {
        Self { name, index: IndexKind::Unique, sealed: false }
    }
    pub const fn sealed(name: &'static str) -> Self {
        Self { name, index: IndexKind::None, sealed: true }
    }
}

/// A table: a number, a name and its columns, in a fixed order (the column ids).
#[derive(Debug, Clone, Copy)]
pub struct TableDef {
    /// Part of every key of the table: fixed in the declaration, so every node of a cluster
    /// lays out a slot's keys alike and a slot's raw data can move between them.
    pub id: u32,
    pub name: &'static str,
    pub columns: &'static [ColumnDef],
}
