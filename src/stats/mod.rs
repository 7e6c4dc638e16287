//! Stats (SPEC §5): [`collect`] builds records, [`spool`] keeps them on disk, [`upload`]
//! sends them.

pub mod collect;
pub mod spool;
pub mod upload;
