//! Key layout. Integers are fixed-width big-endian so byte order is numeric order.
//!
//! - `rows`: `slot(2) ‖ table(4) ‖ row id(8)` → row record
//! - `idx`:  `slot(2) ‖ table(4) ‖ column(2) ‖ esc(value) ‖ row id(8)` → empty
//! - `log`: `slot(2) ‖ index(8)` → a replication log entry (opaque here)
//! - `meta`: `slot(2) ‖ table(4)` → last issued sequence of that slot (u64); `slot(2) ‖ "era"`
//!   → the slot's id era (u64); and
//!   `GLOBAL ‖ "t" ‖ name` → table schema record; `GLOBAL ‖ "l" ‖ name` → node-local record
//!
//! Index values are escaped so that no value is a prefix of another's key: 0x00 becomes
//! 0x00 0xFF and the value ends with 0x00 0x01 (memcomparable, keeps bytewise order).

use crate::store::{RawEntry, Region, RowId, Slot, TableId};

/// Slot prefix of keys that belong to no slot (schema records).
pub(crate) const GLOBAL: [u8; 2] = [0xFF, 0xFF];

pub(crate) fn table_prefix(slot: Slot, table: TableId) -> [u8; 6] {
    let s = slot.0.to_be_bytes();
    let t = table.0.to_be_bytes();
    [s[0], s[1], t[0], t[1], t[2], t[3]]
}

pub(crate) fn row_key(table: TableId, id: RowId) -> [u8; 14] {
    let mut key = [0u8; 14];
    let (head, tail) = key.split_at_mut(6);
    head.copy_from_slice(&table_prefix(id.slot(), table));
    tail.copy_from_slice(&id.0.to_be_bytes());
    key
}

/// The table and row id of a row key.
pub(crate) fn row_key_parts(key: &[u8]) -> Option<(TableId, RowId)> {
    let key: &[u8; 14] = key.try_into().ok()?;
    let (head, id) = key.split_at(6);
    let table = u32::from_be_bytes(head.get(2..6)?.try_into().ok()?);
    Some((TableId(table), RowId(u64::from_be_bytes(id.try_into().ok()?))))
}

/// Everything of one index value: the prefix all its entries share.
pub(crate) fn index_prefix(slot: Slot, table: TableId, column: u16, value: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(6 + 2 + value.len() + 4 + 8);
    key.extend_from_slice(&table_prefix(slot, table));
    key.extend_from_slice(&column.to_be_bytes());
    for &b in value {
        key.push(b);
        if b == 0 {
            key.push(0xFF);
        }
    }
    key.extend_from_slice(&[0x00, 0x01]);
    key
}

pub(crate) fn index_key(prefix: &[u8], id: RowId) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 8);
    key.extend_from_slice(prefix);
    key.extend_from_slice(&id.0.to_be_bytes());
    key
}

/// Shortest index key: a slot, a table, a column, the end of an empty value and a row id.
const MIN_INDEX_KEY: usize = 6 + 2 + 2 + 8;

/// The part of an index key before its row id, which every entry of one indexed value shares:
/// what the `idx` family's prefix filters hold, so a look-up of one value skips the memtables
/// and table files without entries of it.
pub(crate) fn index_value_part(key: &[u8]) -> &[u8] {
    key.split_at(key.len().saturating_sub(8)).0
}

/// Whether `key` is long enough to be an index key (RocksDB's "in domain"): a shorter seek
/// target, such as a slot prefix, is not filtered.
pub(crate) fn is_index_key(key: &[u8]) -> bool {
    key.len() >= MIN_INDEX_KEY
}

/// The row id at the end of an index key.
pub(crate) fn index_key_id(key: &[u8]) -> Option<RowId> {
    let tail = key.len().checked_sub(8).and_then(|at| key.get(at..))?;
    let raw: [u8; 8] = tail.try_into().ok()?;
    Some(RowId(u64::from_be_bytes(raw)))
}

pub(crate) fn counter_key(slot: Slot, table: TableId) -> [u8; 6] {
    table_prefix(slot, table)
}

/// The slot's id era: shorter than every counter key, so never one.
pub(crate) fn era_key(slot: Slot) -> [u8; 5] {
    let s = slot.0.to_be_bytes();
    [s[0], s[1], b'e', b'r', b'a']
}

/// The entry that starts era `era` in `slot`, for a [`crate::RawWrite`]: the ids the slot issues
/// from then on, in every table, are above every id of earlier eras (`era << 33` is the
/// least sequence [`RowId::seq`] gives them).
pub fn era_entry(slot: Slot, era: u64) -> RawEntry {
    RawEntry { region: Region::Meta, key: era_key(slot).to_vec(), value: era.to_be_bytes().to_vec() }
}

/// A replication log entry of `slot` (in the `log` family).
pub(crate) fn log_key(slot: Slot, index: u64) -> [u8; 10] {
    let mut key = [0u8; 10];
    let (head, tail) = key.split_at_mut(2);
    head.copy_from_slice(&slot.0.to_be_bytes());
    tail.copy_from_slice(&index.to_be_bytes());
    key
}

/// The index of a log entry's key.
pub(crate) fn log_index(key: &[u8]) -> Option<u64> {
    key.get(2..).and_then(|tail| <[u8; 8]>::try_from(tail).ok()).map(u64::from_be_bytes)
}

/// Every key of a slot starts with this.
pub(crate) fn slot_prefix(slot: Slot) -> [u8; 2] {
    slot.0.to_be_bytes()
}

/// A node-local record (outside every slot).
pub(crate) fn local_key(name: &str) -> Vec<u8> {
    let mut key = GLOBAL.to_vec();
    key.push(b'l');
    key.extend_from_slice(name.as_bytes());
    key
}

pub(crate) fn schema_key(name: &str) -> Vec<u8> {
    let mut key = GLOBAL.to_vec();
    key.push(b't');
    key.extend_from_slice(name.as_bytes());
    key
}

/// The smallest key greater than every key that starts with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_values_never_prefix_each_other() {
        let t = TableId(1);
        let s = Slot(7);
        let a = index_prefix(s, t, 0, b"ab");
        let b = index_prefix(s, t, 0, b"abc");
        let z = index_prefix(s, t, 0, b"ab\0");
        assert!(!b.starts_with(&a) && !a.starts_with(&b) && !z.starts_with(&a));
        assert!(a < z && z < b, "bytewise order of values is kept");
    }

    #[test]
    fn prefix_end_carries() {
        assert_eq!(prefix_end(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xFF, 0xFF]), None);
    }
}
