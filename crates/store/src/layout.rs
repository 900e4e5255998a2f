//! The store on disk, and the checks that tell a new store from a lost one.
//!
//! ```text
//! <path>/          0700
//! <path>/STORE     marker: {"engine":..,"format":3,"store_id":..,"created_at":..,"generation":..}  0600
//! <path>/db/       sled's files (0700 dir, 0600 files), for a sled store
//! <path>/fjall/    fjall's files, for a fjall store (see [`Backend`])
//! <path>/LOCK      held (flock) while a fjall store is open; sled locks its own files
//! ```
//!
//! The marker sits *beside* the database, not in it, so that losing the
//! database (a deleted or un-mounted `db/`, a restore that forgot it) leaves
//! evidence behind. The same facts are kept inside the database in the `meta`
//! tree; each copy vouches for the other. Without this, sled would quietly
//! create an empty database, every trigger would baseline again and — worse,
//! for triggers past baseline — fire for items already handled.
//!
//! Creation order is: directory, sled files, `meta` (flushed), then the marker.
//! A crash before the marker leaves a database with no marker; if that database
//! also holds no meta and no data it is an unfinished creation and is finished,
//! otherwise the marker is rewritten from `meta` (which proves a store existed).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};

/// Version of the on-disk layout and record formats. Bump it on any change a
/// previous build could misread; opening an unknown version is `Damaged`.
/// Format 2 keeps run items in their own tree; format 3 indexes `pending` and `running`
/// runs under one status tag.
pub const FORMAT: u32 = 3;
/// Earlier formats (sled stores only), opened and upgraded in place (see `kv::sled`).
pub const FORMAT_1: u32 = 1;
pub const FORMAT_2: u32 = 2;

/// How long opening waits for the store's lock. A handle on the same store dropped a
/// moment ago may still hold it (sled releases its lock when its last epoch-deferred
/// reference is reclaimed; fjall's background threads stop after the drop), so a reopen
/// in the same process (tests, a restart of the engine's store handle) would otherwise
/// fail spuriously. A lock held by another process outlasts this and is `Locked`.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

pub const MARKER_FILE: &str = "STORE";
pub const DB_DIR: &str = "db";
pub const FJALL_DIR: &str = "fjall";
pub const LOCK_FILE: &str = "LOCK";

/// The embedded database a store keeps its data in. Chosen when the store is created and
/// recorded in its marker; every later open follows the marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// sled 0.34: the original backend. Markers written before backends existed name none
    /// and mean this one.
    Sled,
    /// fjall 2 (an LSM tree with a journal): cheaper durable writes, and no
    /// process-wide lock that readers wait for.
    Fjall,
    /// PostgreSQL ([`crate::PgStore`]): a server, not files; never named by a marker and
    /// never given to [`crate::create_or_open`].
    Postgres,
}

impl Backend {
    /// What new stores are created with unless configured otherwise: fjall, whose durable
    /// writes cost less than sled's (BENCHMARKS.md, "Store backends").
    pub const FOR_NEW_STORES: Backend = Backend::Fjall;

    pub fn name(self) -> &'static str {
        match self {
            Backend::Sled => "sled",
            Backend::Fjall => "fjall",
            Backend::Postgres => "postgres",
        }
    }

    /// The directory inside the store that holds this backend's files.
    pub fn dir_name(self) -> &'static str {
        match self {
            Backend::Sled => DB_DIR,
            Backend::Fjall => FJALL_DIR,
            // Not a directory anything is written to: a PostgreSQL store has no files.
            Backend::Postgres => "postgres",
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "sled" => Ok(Backend::Sled),
            "fjall" => Ok(Backend::Fjall),
            other => Err(format!("unknown store backend {other:?} (known: sled, fjall)")),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

pub const META_FORMAT: &[u8] = b"format";
pub const META_STORE_ID: &[u8] = b"store_id";
pub const META_CREATED_AT: &[u8] = b"created_at";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    #[serde(default = "before_backends")]
    pub engine: Backend,
    pub format: u32,
    pub store_id: String,
    pub created_at: DateTime<Utc>,
    /// The commit generation the database had reached when this marker was written (fjall
    /// stores; 0 for sled stores and markers written before generations existed). The
    /// database records each generation durably *before* the marker names it, so a database
    /// behind its marker lost writes it had made durable: see [`check_generation`].
    #[serde(default)]
    pub generation: u64,
}

/// The marker the `meta` records (format, store id, creation time) describe, read by either
/// backend. `Ok(None)`: no meta at all. `Err(reason)`: meta present but unreadable.
pub fn marker_from_meta(
    engine: Backend,
    format: Option<&[u8]>,
    id: Option<&[u8]>,
    created: Option<&[u8]>,
) -> std::result::Result<Option<Marker>, String> {
    if format.is_none() && id.is_none() && created.is_none() {
        return Ok(None);
    }
    let text = |v: Option<&[u8]>, what: &str| -> std::result::Result<String, String> {
        let v = v.ok_or_else(|| format!("its meta record has no {what}"))?;
        String::from_utf8(v.to_vec()).map_err(|_| format!("its meta {what} is not text"))
    };
    let format: u32 =
        text(format, "format version")?.parse().map_err(|_| "its meta format version is not a number".to_string())?;
    let store_id = text(id, "store id")?;
    let created_at = DateTime::parse_from_rfc3339(&text(created, "creation time")?)
        .map_err(|_| "its meta creation time is not a time".to_string())?
        .with_timezone(&Utc);
    Ok(Some(Marker { engine, format, store_id, created_at, generation: 0 }))
}

/// Checks the `meta` a database holds against the marker found beside it, for either
/// backend: a format in `known`, the same store id; a lost marker (or a creation that
/// stopped just before writing it) is rewritten from `meta`, which proves a store existed.
pub fn check_meta(root: &Path, found: &Found, meta: &Marker, known: &[u32]) -> Result<()> {
    if let Some(mk) = found.marker.as_ref().filter(|mk| !known.contains(&mk.format)) {
        return Err(damaged(
            root,
            format!(
                "the marker file {MARKER_FILE} has format version {}, which this flowd does not know (it knows {FORMAT})",
                mk.format
            ),
        ));
    }
    if !known.contains(&meta.format) {
        return Err(damaged(
            root,
            format!("it has format version {}, which this flowd does not know (it knows {FORMAT})", meta.format),
        ));
    }
    match &found.marker {
        Some(mk) if mk.store_id != meta.store_id => Err(damaged(
            root,
            format!(
                "the marker file names store {} but the database is store {}: the database was replaced",
                mk.store_id, meta.store_id
            ),
        )),
        Some(_) => Ok(()),
        None => write_marker(root, meta),
    }
}

/// A database whose commit generation (`in_db`) is behind the one its marker recorded lost
/// writes it had made durable (a truncated journal, a restored or rolled-back file): opening
/// it would forget items already handled and fire them again. A crash cannot cause this: a
/// generation is durable in the database before any marker names it.
pub fn check_generation(root: &Path, found: &Found, in_db: u64) -> Result<()> {
    match &found.marker {
        Some(mk) if mk.generation > in_db => Err(damaged(
            root,
            format!(
                "its database is at commit generation {in_db} but the marker file {MARKER_FILE} records generation {}: \
                 the database lost writes it had made durable (a truncated journal or a file from an older copy)",
                mk.generation
            ),
        )),
        _ => Ok(()),
    }
}

/// For a database without `meta`: only an unfinished creation (no marker, no data) may be
/// finished; anything else lost its store.
pub fn check_no_meta(root: &Path, found: &Found, holds_data: bool) -> Result<()> {
    if found.marker.is_some() {
        return Err(damaged(root, "its database has no meta record (the database was replaced or damaged)"));
    }
    if holds_data {
        return Err(damaged(root, "its database holds data but no meta record"));
    }
    Ok(())
}

/// A marker written before backends existed: sled was the only one.
fn before_backends() -> Backend {
    Backend::Sled
}

/// What the directory looked like before the database was opened.
pub struct Found {
    pub marker: Option<Marker>,
}

pub fn db_dir(root: &Path, backend: Backend) -> PathBuf {
    root.join(backend.dir_name())
}

/// Where a new database is built before it is renamed to [`db_dir`] (fjall's): what a crash
/// during creation leaves there is never opened, only removed by the next creation.
pub fn staging_dir(root: &Path, backend: Backend) -> PathBuf {
    root.join(staging_name(backend))
}

fn staging_name(backend: Backend) -> String {
    format!("{}.new", backend.dir_name())
}

/// Moves a database built in [`staging_dir`] to [`db_dir`] (replacing the empty directory
/// [`prepare`] made), durably.
pub fn install_staged(root: &Path, backend: Backend) -> Result<()> {
    let (staged, db) = (staging_dir(root, backend), db_dir(root, backend));
    sync_dir(&staged)?;
    match fs::remove_dir(&db) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("remove the empty directory", &db)(e)),
    }
    fs::rename(&staged, &db).map_err(io("rename the new database into place", &staged))?;
    sync_dir(root)
}

/// Removes what an interrupted creation left in [`staging_dir`].
pub fn clear_staging(root: &Path, backend: Backend) -> Result<()> {
    let staged = staging_dir(root, backend);
    match fs::remove_dir_all(&staged) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("remove an unfinished database", &staged)(e)),
    }
}

/// The backend of the store at `root` if one was ever created there: the marker's, or
/// for a creation that stopped before its marker, the one whose directory exists.
pub fn existing_backend(root: &Path) -> Result<Option<Backend>> {
    if !root.is_dir() {
        return Ok(None);
    }
    if let Some(m) = read_marker(root)? {
        return Ok(Some(m.engine));
    }
    for b in [Backend::Fjall, Backend::Sled] {
        if db_dir(root, b).is_dir() {
            return Ok(Some(b));
        }
    }
    Ok(None)
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { op, path, source }
}

pub fn damaged(root: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::Damaged { path: root.to_path_buf(), reason: reason.into() }
}

/// Inspects `root` without changing it, then makes sure the directories exist
/// with private permissions (creating them only when `create` is set).
pub fn prepare(root: &Path, create: bool, backend: Backend) -> Result<Found> {
    if !root.exists() {
        if !create {
            return Err(StoreError::NotFound {
                path: root.to_path_buf(),
                reason: "the directory does not exist".into(),
            });
        }
        make_private_dir(root)?;
    } else if !root.is_dir() {
        return Err(StoreError::NotAStore { path: root.to_path_buf() });
    }

    let marker = read_marker(root)?;
    if let Some(m) = &marker {
        if m.engine != backend {
            return Err(StoreError::Invalid(format!(
                "the store at {} is a {} store, not {}",
                root.display(),
                m.engine,
                backend
            )));
        }
    }
    let db_present = db_has_data_file(root, backend)?;

    match (&marker, db_present) {
        (Some(m), false) => {
            return Err(damaged(
                root,
                format!(
                    "the marker file says store {} was created here on {}, but its database ({}/) is missing or empty",
                    m.store_id,
                    m.created_at.to_rfc3339(),
                    backend.dir_name()
                ),
            ))
        }
        (None, false) => {
            let staging = staging_name(backend);
            let foreign = fs::read_dir(root)
                .map_err(io("read directory", root))?
                .filter_map(|e| e.ok())
                // An empty database directory, a lock file and an unfinished staged
                // database are what a crash during creation leaves: nothing was stored.
                .any(|e| {
                    let name = e.file_name();
                    name != backend.dir_name() && name != LOCK_FILE && name != staging.as_str()
                });
            if foreign {
                return Err(StoreError::NotAStore { path: root.to_path_buf() });
            }
            if !create {
                return Err(StoreError::NotFound {
                    path: root.to_path_buf(),
                    reason: "no store has been created here yet".into(),
                });
            }
        }
        _ => {}
    }

    let db = db_dir(root, backend);
    if !db.exists() {
        make_private_dir(&db)?;
    }
    Ok(Found { marker })
}

/// sled 0.34 keeps its log in `db/db`, fjall its format marker in `fjall/version`; a
/// missing or zero-length file means no database, whatever else the directory holds.
pub fn db_has_data_file(root: &Path, backend: Backend) -> Result<bool> {
    let file = match backend {
        Backend::Sled => db_dir(root, backend).join("db"),
        Backend::Fjall => db_dir(root, backend).join("version"),
        Backend::Postgres => return Ok(false),
    };
    match fs::metadata(&file) {
        Ok(m) => Ok(m.is_file() && m.len() > 0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io("inspect", &file)(e)),
    }
}

pub fn read_marker(root: &Path) -> Result<Option<Marker>> {
    let path = root.join(MARKER_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("read", &path)(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| damaged(root, format!("the marker file {MARKER_FILE} is unreadable: {e}")))
}

/// Writes the marker atomically (temp file, fsync, rename, fsync directory):
/// a torn marker would make a healthy store look damaged.
pub fn write_marker(root: &Path, marker: &Marker) -> Result<()> {
    let path = root.join(MARKER_FILE);
    let tmp = root.join(format!("{MARKER_FILE}.tmp"));
    let bytes =
        serde_json::to_vec_pretty(marker).map_err(|e| StoreError::Invalid(format!("cannot encode marker: {e}")))?;
    {
        let mut f = private_file(&tmp)?;
        f.write_all(&bytes).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("sync", &tmp))?;
    }
    fs::rename(&tmp, &path).map_err(io("rename", &tmp))?;
    sync_dir(root)
}

fn private_file(path: &Path) -> Result<fs::File> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path).map_err(io("create", path))
}

fn make_private_dir(path: &Path) -> Result<()> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(path).map_err(io("create directory", path))?;
    set_mode(path, 0o700)
}

fn sync_dir(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let d = fs::File::open(path).map_err(io("open", path))?;
        d.sync_all().map_err(io("sync", path))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io("chmod", path))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> Result<()> {
    Ok(())
}

/// sled creates its files with the process umask (usually 0644). The store
/// holds OAuth tokens and customer data, so after opening, every file is made
/// 0600 and every directory 0700. The root directory is 0700 from the start,
/// so nothing is readable by others even before this runs; files sled creates
/// later (snapshots) are behind that directory too and are fixed on next open.
pub fn restrict_permissions(root: &Path) -> Result<()> {
    fn walk(dir: &Path) -> Result<()> {
        set_mode(dir, 0o700)?;
        for entry in fs::read_dir(dir).map_err(io("read directory", dir))? {
            let entry = entry.map_err(io("read directory", dir))?;
            let path = entry.path();
            let ty = entry.file_type().map_err(io("inspect", &path))?;
            if ty.is_dir() {
                walk(&path)?;
            } else if ty.is_file() {
                set_mode(&path, 0o600)?;
            }
        }
        Ok(())
    }
    walk(root)
}
