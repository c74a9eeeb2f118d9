//! The durable state store: one redb file under `--root` holding a schema
//! version and the pod, container and image records.
//!
//! Every write is one redb transaction with immediate durability, so a crash
//! at any point leaves either the old or the new state, and a store that opens.
//! redb also locks the file, so two crius processes never share one store.

mod migrate;
mod records;

use std::path::{Path, PathBuf};

pub use records::{ContainerRecord, ContainerState, ImageRecord, PodRecord, PodState, Record, RecordKind};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

/// The schema this build writes. Bump it, and add a migration in
/// [`StateStore::migrate`], whenever a record changes incompatibly.
pub const SCHEMA_VERSION: u64 = 2;

/// The file name of the store under `--root`.
pub const STORE_FILE: &str = "state.redb";

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SCHEMA_KEY: &str = "schema_version";
const SETTINGS: TableDefinition<&str, &str> = TableDefinition::new("settings");

/// Why the store could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The directory that holds the store could not be made.
    #[error("create state directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another process has the store open.
    #[error("state store {path} is in use by another process (is another crius running with the same --root?)")]
    InUse {
        /// The store file.
        path: PathBuf,
    },
    /// redb refused an operation.
    #[error("state store {path}: {operation}")]
    Database {
        /// The store file.
        path: PathBuf,
        /// What was being done.
        operation: &'static str,
        /// redb's error.
        #[source]
        source: Box<redb::Error>,
    },
    /// The store was written by a newer crius.
    #[error(
        "state store {path} has schema version {found}, newer than the {supported} this crius supports; \
         run the newer crius or move the store away"
    )]
    NewerSchema {
        /// The store file.
        path: PathBuf,
        /// Version in the file.
        found: u64,
        /// Version this build writes.
        supported: u64,
    },
    /// A stored record is not valid JSON for its type.
    #[error("state store record {kind}/{id} is unreadable")]
    Decode {
        /// Record kind.
        kind: RecordKind,
        /// Record id.
        id: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A record could not be serialised.
    #[error("encode {kind} record {id}")]
    Encode {
        /// Record kind.
        kind: RecordKind,
        /// Record id.
        id: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// The open state store.
#[derive(Debug)]
pub struct StateStore {
    db: Database,
    path: PathBuf,
}

/// A set of writes applied atomically by [`StateStore::write`].
#[derive(Debug, Default)]
pub struct WriteBatch {
    ops: Vec<BatchOp>,
}

#[derive(Debug)]
enum BatchOp {
    Put { kind: RecordKind, id: String, value: Vec<u8> },
    Delete { kind: RecordKind, id: String },
    Setting { key: String, value: Option<String> },
}

impl WriteBatch {
    /// Stores `record`, replacing any record of the same kind and id.
    pub fn put<R: Record>(&mut self, record: &R) -> Result<&mut Self, StoreError> {
        let id = record.id().to_owned();
        let value = serde_json::to_vec(record).map_err(|source| StoreError::Encode {
            kind: R::KIND,
            id: id.clone(),
            source,
        })?;
        self.ops.push(BatchOp::Put { kind: R::KIND, id, value });
        Ok(self)
    }

    /// Deletes the record of type `R` with `id`, if there is one.
    pub fn delete<R: Record>(&mut self, id: &str) -> &mut Self {
        self.ops.push(BatchOp::Delete { kind: R::KIND, id: id.to_owned() });
        self
    }

    /// Sets (or, with `None`, clears) a runtime setting such as the pod CIDR.
    pub fn setting(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        self.ops.push(BatchOp::Setting { key: key.to_owned(), value: value.map(str::to_owned) });
        self
    }
}

impl StateStore {
    /// Opens (creating if needed) the store at `<root>/state.redb`, checks its
    /// schema version and makes sure every table exists.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(root).map_err(|source| StoreError::CreateDir { path: root.to_path_buf(), source })?;
        let path = root.join(STORE_FILE);
        let db = match Database::create(&path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(StoreError::InUse { path }),
            Err(e) => return Err(db_error(&path, "open", e)),
        };
        let store = Self { db, path };
        store.migrate()?;
        Ok(store)
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates missing tables and records or upgrades the schema version.
    fn migrate(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.err("begin schema check", e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.err("open meta table", e))?;
            let found = meta.get(SCHEMA_KEY).map_err(|e| self.err("read schema version", e))?.map(|v| v.value());
            match found {
                Some(found) if found > SCHEMA_VERSION => {
                    return Err(StoreError::NewerSchema { path: self.path.clone(), found, supported: SCHEMA_VERSION });
                }
                Some(_) | None => {
                    meta.insert(SCHEMA_KEY, SCHEMA_VERSION).map_err(|e| self.err("write schema version", e))?;
                }
            }
            for kind in RecordKind::ALL {
                txn.open_table(kind.table()).map_err(|e| self.err("create record table", e))?;
            }
            if found == Some(1) {
                self.migrate_records(&txn, migrate::v1_to_v2)?;
            }
            txn.open_table(SETTINGS).map_err(|e| self.err("create settings table", e))?;
        }
        txn.commit().map_err(|e| self.err("commit schema", e))
    }

    /// Rewrites every pod and container record with `rewrite` (in the
    /// schema migration's transaction).
    fn migrate_records(
        &self,
        txn: &redb::WriteTransaction,
        rewrite: fn(RecordKind, &str, &mut serde_json::Value),
    ) -> Result<(), StoreError> {
        for kind in [RecordKind::Pod, RecordKind::Container] {
            let mut table = txn.open_table(kind.table()).map_err(|e| self.err("open table", e))?;
            let mut rewritten = Vec::new();
            for entry in table.iter().map_err(|e| self.err("migrate records", e))? {
                let (key, value) = entry.map_err(|e| self.err("migrate records", e))?;
                let Ok(mut record) = serde_json::from_slice::<serde_json::Value>(value.value()) else { continue };
                rewrite(kind, key.value(), &mut record);
                let bytes = serde_json::to_vec(&record).map_err(|source| StoreError::Encode {
                    kind,
                    id: key.value().to_owned(),
                    source,
                })?;
                rewritten.push((key.value().to_owned(), bytes));
            }
            for (id, bytes) in rewritten {
                table.insert(id.as_str(), bytes.as_slice()).map_err(|e| self.err("migrate records", e))?;
            }
        }
        Ok(())
    }

    /// The schema version recorded in the file.
    pub fn schema_version(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err("begin read", e))?;
        let meta = txn.open_table(META).map_err(|e| self.err("open meta table", e))?;
        let version = meta.get(SCHEMA_KEY).map_err(|e| self.err("read schema version", e))?;
        Ok(version.map_or(0, |v| v.value()))
    }

    /// Checks that the store answers a read: used by the `Status` RPC.
    pub fn check(&self) -> Result<(), StoreError> {
        self.schema_version().map(|_| ())
    }

    /// Applies every write of `batch` in one transaction: all or nothing.
    pub fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.transact(|txn| {
            for op in batch.ops {
                match op {
                    BatchOp::Put { kind, id, value } => txn.insert(kind, &id, &value)?,
                    BatchOp::Delete { kind, id } => txn.remove(kind, &id)?,
                    BatchOp::Setting { key, value } => txn.set_setting(&key, value.as_deref())?,
                }
            }
            Ok(())
        })
    }

    /// Runs `work` in one write transaction and commits what it wrote when
    /// it returns `Ok`; an `Err` discards every write. Write transactions
    /// run one at a time, so what `work` reads cannot change under it: a
    /// read-modify-write in here never loses a concurrent update.
    pub fn transact<T, E: From<StoreError>>(&self, work: impl FnOnce(&mut Txn<'_>) -> Result<T, E>) -> Result<T, E> {
        let txn = self.db.begin_write().map_err(|e| self.err("begin write", e))?;
        let value = work(&mut Txn { txn: &txn, store: self })?;
        txn.commit().map_err(|e| self.err("commit", e))?;
        Ok(value)
    }

    /// Changes the record `id` in one transaction: `change` gets the stored
    /// record and the result is written back when it returns `Ok`. `None`
    /// when there is no such record (nothing is written).
    pub fn update<R: Record, E: From<StoreError>>(
        &self,
        id: &str,
        change: impl FnOnce(&mut R) -> Result<(), E>,
    ) -> Result<Option<R>, E> {
        self.transact(|txn| {
            let Some(mut record) = txn.get::<R>(id)? else { return Ok(None) };
            change(&mut record)?;
            txn.put(&record)?;
            Ok(Some(record))
        })
    }

    /// Stores one record (a one-write batch).
    pub fn put<R: Record>(&self, record: &R) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.put(record)?;
        self.write(batch)
    }

    /// Deletes one record; deleting a missing record is not an error.
    pub fn delete<R: Record>(&self, id: &str) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.delete::<R>(id);
        self.write(batch)
    }

    /// Reads one record.
    pub fn get<R: Record>(&self, id: &str) -> Result<Option<R>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err("begin read", e))?;
        let table = txn.open_table(R::KIND.table()).map_err(|e| self.err("open table", e))?;
        let Some(value) = table.get(id).map_err(|e| self.err("read record", e))? else {
            return Ok(None);
        };
        decode::<R>(id, value.value()).map(Some)
    }

    /// Reads every record of one kind, in id order.
    pub fn list<R: Record>(&self) -> Result<Vec<R>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err("begin read", e))?;
        let table = txn.open_table(R::KIND.table()).map_err(|e| self.err("open table", e))?;
        let mut records = Vec::with_capacity(usize::try_from(table.len().unwrap_or(0)).unwrap_or(0));
        for entry in table.iter().map_err(|e| self.err("list records", e))? {
            let (key, value) = entry.map_err(|e| self.err("list records", e))?;
            records.push(decode::<R>(key.value(), value.value())?);
        }
        Ok(records)
    }

    /// Reads one record by full id, or by an id prefix that matches exactly
    /// one record (as crictl and kubelet users abbreviate ids).
    pub fn get_by_id_or_prefix<R: Record>(&self, id: &str) -> Result<Option<R>, StoreError> {
        if let Some(record) = self.get::<R>(id)? {
            return Ok(Some(record));
        }
        let mut matches = self.list::<R>()?.into_iter().filter(|r| r.id().starts_with(id));
        Ok(match (matches.next(), matches.next()) {
            (Some(only), None) => Some(only),
            _ => None,
        })
    }

    /// Reads a runtime setting.
    pub fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err("begin read", e))?;
        let table = txn.open_table(SETTINGS).map_err(|e| self.err("open settings", e))?;
        let value = table.get(key).map_err(|e| self.err("read setting", e))?;
        Ok(value.map(|v| v.value().to_owned()))
    }

    fn err(&self, operation: &'static str, e: impl Into<redb::Error>) -> StoreError {
        db_error(&self.path, operation, e)
    }
}

/// An open write transaction (see [`StateStore::transact`]): its reads see
/// its own writes.
pub struct Txn<'a> {
    txn: &'a redb::WriteTransaction,
    store: &'a StateStore,
}

impl std::fmt::Debug for Txn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Txn").field("store", &self.store.path).finish_non_exhaustive()
    }
}

impl Txn<'_> {
    /// Reads one record.
    pub fn get<R: Record>(&self, id: &str) -> Result<Option<R>, StoreError> {
        let table = self.txn.open_table(R::KIND.table()).map_err(|e| self.store.err("open table", e))?;
        let Some(value) = table.get(id).map_err(|e| self.store.err("read record", e))? else {
            return Ok(None);
        };
        decode::<R>(id, value.value()).map(Some)
    }

    /// Reads every record of one kind, in id order.
    pub fn list<R: Record>(&self) -> Result<Vec<R>, StoreError> {
        let table = self.txn.open_table(R::KIND.table()).map_err(|e| self.store.err("open table", e))?;
        let mut records = Vec::new();
        for entry in table.iter().map_err(|e| self.store.err("list records", e))? {
            let (key, value) = entry.map_err(|e| self.store.err("list records", e))?;
            records.push(decode::<R>(key.value(), value.value())?);
        }
        Ok(records)
    }

    /// Stores `record`, replacing any record of the same kind and id.
    pub fn put<R: Record>(&mut self, record: &R) -> Result<(), StoreError> {
        let id = record.id();
        let value = serde_json::to_vec(record).map_err(|source| StoreError::Encode {
            kind: R::KIND,
            id: id.to_owned(),
            source,
        })?;
        self.insert(R::KIND, id, &value)
    }

    /// Deletes the record of type `R` with `id`, if there is one.
    pub fn delete<R: Record>(&mut self, id: &str) -> Result<(), StoreError> {
        self.remove(R::KIND, id)
    }

    fn insert(&mut self, kind: RecordKind, id: &str, value: &[u8]) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(kind.table()).map_err(|e| self.store.err("open table", e))?;
        table.insert(id, value).map_err(|e| self.store.err("insert record", e))?;
        Ok(())
    }

    fn remove(&mut self, kind: RecordKind, id: &str) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(kind.table()).map_err(|e| self.store.err("open table", e))?;
        table.remove(id).map_err(|e| self.store.err("delete record", e))?;
        Ok(())
    }

    fn set_setting(&mut self, key: &str, value: Option<&str>) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(SETTINGS).map_err(|e| self.store.err("open settings", e))?;
        match value {
            Some(value) => table.insert(key, value).map(drop),
            None => table.remove(key).map(drop),
        }
        .map_err(|e| self.store.err("write setting", e))
    }
}

fn db_error(path: &Path, operation: &'static str, e: impl Into<redb::Error>) -> StoreError {
    StoreError::Database { path: path.to_path_buf(), operation, source: Box::new(e.into()) }
}

fn decode<R: Record>(id: &str, bytes: &[u8]) -> Result<R, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Decode { kind: R::KIND, id: id.to_owned(), source })
}

#[cfg(test)]
mod tests;
