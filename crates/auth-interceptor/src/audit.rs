//! The tamper-evident audit log: every authorization decision appended to a JSON-lines file in
//! an HMAC-SHA256 chain.
//!
//! Each record carries `mac = HMAC-SHA256(key, previous mac ‖ record)`, where `record` is the
//! record's JSON without its `mac` field and the first record's previous mac is empty. Editing a
//! record breaks its mac; removing or reordering records breaks the chain (each record also
//! carries its sequence number); cutting records off the end is caught by the head file
//! (`<log>.head`) that holds the last sequence number and mac, itself under the key. Without the
//! key nobody can write a record that verifies.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use serde::{Deserialize, Serialize};

/// The smallest key we accept, in bytes.
pub const MIN_KEY_BYTES: usize = 32;

/// One decision, as written to the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the chain, from 0.
    pub seq: u64,
    /// When, in milliseconds since the epoch.
    pub time_ms: u64,
    /// The service that decided.
    pub service: String,
    /// `allow`, `deny`.
    pub decision: String,
    /// The reason label (`policy`, `missing_scope`, `wrong_audience`, …).
    pub reason: String,
    /// The full gRPC method path.
    pub method: String,
    /// The token's subject.
    pub subject: String,
    /// The acting client of an exchanged token (`act.sub`).
    pub actor: String,
    /// The OAuth2 client of the token.
    pub client: String,
    /// The caller's SPIFFE ID.
    pub peer: String,
    /// The trace the decision belongs to (empty until tracing is on).
    pub trace_id: String,
    /// The version of the policy that decided (absent on records that are no policy decision,
    /// and on records from before policies had versions).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub policy: String,
    /// The previous record's mac, hex; empty for the first record.
    pub prev: String,
    /// HMAC-SHA256(key, prev ‖ this record without `mac`), hex.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
}

/// What a caller fills in; the log adds sequence, time, chain and mac.
#[derive(Debug, Clone, Default)]
pub struct Decision<'a> {
    /// `allow` or `deny`.
    pub decision: &'a str,
    /// The reason label.
    pub reason: &'a str,
    /// The method path.
    pub method: &'a str,
    /// The token's subject.
    pub subject: &'a str,
    /// `act.sub`.
    pub actor: &'a str,
    /// The token's client.
    pub client: &'a str,
    /// The caller's SPIFFE ID.
    pub peer: &'a str,
    /// The trace id.
    pub trace_id: &'a str,
    /// The version of the policy that decided, if a policy did.
    pub policy: &'a str,
}

/// A failure to open, write or read the log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The key file is missing, unreadable or too short.
    #[error("audit key {path}: {detail}")]
    Key {
        /// The key file.
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// The log could not be read or written.
    #[error("audit log {path}: {source}")]
    Io {
        /// The log file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The existing log does not verify, so nothing more is appended to it.
    #[error("audit log {path} does not verify: {problem}")]
    Broken {
        /// The log file.
        path: String,
        /// The first problem.
        problem: ChainProblem,
    },
}

/// The first thing wrong with a log, found by [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainProblem {
    /// A line is not a record.
    #[error("line {line}: not an audit record")]
    Unreadable {
        /// 1-based line number.
        line: usize,
    },
    /// The record's mac does not match its contents: it was altered.
    #[error("line {line}: record {seq} was altered")]
    Altered {
        /// 1-based line number.
        line: usize,
        /// Its sequence number.
        seq: u64,
    },
    /// The record does not follow the one before it: records were removed or reordered.
    #[error(
        "line {line}: record {seq} does not follow record {expected_seq} (removed or reordered)"
    )]
    OutOfChain {
        /// 1-based line number.
        line: usize,
        /// Its sequence number.
        seq: u64,
        /// The sequence number that should be here.
        expected_seq: u64,
    },
    /// The log ends before the last record the head file vouches for.
    #[error("the log ends at {found} records but {expected} were written (truncated)")]
    Truncated {
        /// Records present.
        found: u64,
        /// Records written.
        expected: u64,
    },
    /// The head file is missing, unreadable or forged.
    #[error("the head file is missing or does not verify")]
    BadHead,
    /// The active segment ends in a record cut short: the writer was killed mid-write. The
    /// service cuts it off (and records that it did) when it next opens the log.
    #[error("the last {bytes} bytes are a record cut short by a crash (cut off at the next start)")]
    TornTail {
        /// How many bytes.
        bytes: u64,
    },
    /// A problem inside a sealed segment.
    #[error("{file}: {problem}")]
    InSegment {
        /// The segment's file.
        file: String,
        /// What is wrong there.
        problem: Box<ChainProblem>,
    },
}

/// The id of the trace the current request belongs to (hex), or empty outside a trace: what
/// every audit record carries so that a trace and the chain point at each other.
pub fn current_trace_id() -> String {
    use opentelemetry::trace::TraceContextExt as _;
    let cx = opentelemetry::Context::current();
    let span = cx.span();
    if span.span_context().is_valid() {
        span.span_context().trace_id().to_string()
    } else {
        String::new()
    }
}

/// How to make a key file the readers accept; every key error repeats it.
pub const KEY_FILE_HELP: &str = "a key file is hex text of at least 32 bytes (64 hex digits); make one with \
     `meshctl audit keygen --out FILE` (or `openssl rand -hex 32 > FILE`)";

/// Reads an audit key file.
///
/// The format is hex text: at least [`MIN_KEY_BYTES`] bytes written as hex digits, surrounding
/// white space ignored. Text survives editors, `echo`, secrets managers and trimming; raw random
/// bytes do not (a raw key whose last byte happened to be `\n` used to be trimmed and refused).
///
/// Raw binary keys written before the format existed keep working, byte for byte as they were
/// read then, so existing chains still verify: a file that is not hex text is a legacy key, its
/// trailing line breaks dropped as before when at least 32 bytes remain, taken whole otherwise.
/// A warning says how to move to a hex key (together with a new log).
pub fn read_key(path: &Path) -> Result<hmac::Key, AuditError> {
    let bytes = std::fs::read(path).map_err(|e| AuditError::Key {
        path: path.display().to_string(),
        detail: e.to_string(),
    })?;
    let key = parse_key(&bytes).map_err(|detail| AuditError::Key {
        path: path.display().to_string(),
        detail,
    })?;
    if let KeyBytes::Legacy(_) = key {
        tracing::warn!(path = %path.display(), "audit key file holds raw bytes, read as a legacy key; {KEY_FILE_HELP}");
    }
    Ok(hmac::Key::new(hmac::HMAC_SHA256, key.bytes()))
}

/// A key file's contents, decoded.
#[derive(Debug, PartialEq, Eq)]
enum KeyBytes {
    /// Hex text, decoded.
    Hex(Vec<u8>),
    /// Raw bytes from before the hex format.
    Legacy(Vec<u8>),
}

impl KeyBytes {
    fn bytes(&self) -> &[u8] {
        match self {
            Self::Hex(bytes) | Self::Legacy(bytes) => bytes,
        }
    }
}

fn parse_key(file: &[u8]) -> Result<KeyBytes, String> {
    let text = file.trim_ascii();
    let is_hex_text = !text.is_empty() && text.iter().all(u8::is_ascii_hexdigit);
    if is_hex_text {
        let decoded =
            decode_hex(text).ok_or_else(|| format!("odd number of hex digits; {KEY_FILE_HELP}"))?;
        if decoded.len() < MIN_KEY_BYTES {
            return Err(format!(
                "holds {} bytes of hex, at least {MIN_KEY_BYTES} are needed; {KEY_FILE_HELP}",
                decoded.len()
            ));
        }
        return Ok(KeyBytes::Hex(decoded));
    }
    let mut trimmed = file;
    while let [rest @ .., b'\n' | b'\r'] = trimmed {
        trimmed = rest;
    }
    if trimmed.len() >= MIN_KEY_BYTES {
        Ok(KeyBytes::Legacy(trimmed.to_vec()))
    } else if file.len() >= MIN_KEY_BYTES {
        // A raw key whose last bytes happen to be line breaks: they are part of the key.
        Ok(KeyBytes::Legacy(file.to_vec()))
    } else {
        Err(format!("too short; {KEY_FILE_HELP}"))
    }
}

fn decode_hex(text: &[u8]) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    text.chunks_exact(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// Writes a new random key (32 bytes from the system's CSPRNG) as hex text to `path`, mode
/// 0600, refusing to replace an existing file: a replaced key orphans the chain it signed.
pub fn write_new_key(path: &Path) -> Result<(), AuditError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |source| AuditError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut key = [0u8; MIN_KEY_BYTES];
    aws_lc_rs::rand::fill(&mut key).map_err(|_| AuditError::Key {
        path: path.display().to_string(),
        detail: "the system random generator failed".into(),
    })?;
    let mut text = hex(&key);
    text.push('\n');
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .map_err(io)
}

/// A record without its mac, borrowed: what the mac covers, serialized exactly as
/// [`AuditRecord`] is (same fields in the same order; `mac`, last, left out).
#[derive(Serialize)]
struct Unsigned<'a> {
    seq: u64,
    time_ms: u64,
    service: &'a str,
    decision: &'a str,
    reason: &'a str,
    method: &'a str,
    subject: &'a str,
    actor: &'a str,
    client: &'a str,
    peer: &'a str,
    trace_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    policy: &'a str,
    prev: &'a str,
}

impl<'a> Unsigned<'a> {
    fn of(record: &'a AuditRecord) -> Self {
        Self {
            seq: record.seq,
            time_ms: record.time_ms,
            service: &record.service,
            decision: &record.decision,
            reason: &record.reason,
            method: &record.method,
            subject: &record.subject,
            actor: &record.actor,
            client: &record.client,
            peer: &record.peer,
            trace_id: &record.trace_id,
            policy: &record.policy,
            prev: &record.prev,
        }
    }

    /// The record's line (JSON and `\n`) and its mac, from one serialization: the mac covers
    /// `prev ‖ body`, and the line is the body with `"mac"` added as its last field, byte for
    /// byte what serializing the signed [`AuditRecord`] gives.
    fn sign(&self, key: &hmac::Key) -> (Vec<u8>, String) {
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        let mac = mac_of(key, self.prev, &line);
        line.pop(); // the closing brace
        line.extend_from_slice(b",\"mac\":\"");
        line.extend_from_slice(mac.as_bytes());
        line.extend_from_slice(b"\"}\n");
        (line, mac)
    }
}

fn mac(key: &hmac::Key, record: &AuditRecord) -> String {
    let body = serde_json::to_vec(&Unsigned::of(record)).unwrap_or_default();
    mac_of(key, &record.prev, &body)
}

fn mac_of(key: &hmac::Key, prev: &str, body: &[u8]) -> String {
    let mut context = hmac::Context::with_key(key);
    context.update(prev.as_bytes());
    context.update(body);
    hex(context.sign().as_ref())
}

fn head_mac(key: &hmac::Key, count: u64, last_mac: &str) -> String {
    hex(hmac::sign(key, format!("head:{count}:{last_mac}").as_bytes()).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    text
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Head {
    count: u64,
    last_mac: String,
    mac: String,
}

/// The head file holds two slots of this many bytes. Each head goes to the slot its count
/// selects, so a write cut short by a crash spoils one slot and leaves the other (one record
/// older) whole.
const HEAD_SLOT: usize = 256;

impl Head {
    fn new(key: &hmac::Key, count: u64, last_mac: &str) -> Self {
        Self {
            count,
            last_mac: last_mac.to_owned(),
            mac: head_mac(key, count, last_mac),
        }
    }

    /// Its slot's offset in the head file, and the slot's bytes (JSON, padded).
    fn slot(&self) -> (u64, Vec<u8>) {
        let mut bytes = serde_json::to_vec(self).unwrap_or_default();
        bytes.resize(HEAD_SLOT - 1, b' ');
        bytes.push(b'\n');
        ((self.count % 2) * HEAD_SLOT as u64, bytes)
    }
}

/// The newest head in `path`'s head file that the key vouches for. Heads written before the
/// two slots existed sit alone at the start of the file and read as slot 0.
fn read_head(path: &Path, key: &hmac::Key) -> Option<Head> {
    let bytes = std::fs::read(head_path(path)).ok()?;
    bytes
        .chunks(HEAD_SLOT)
        .take(2)
        .filter_map(|slot| {
            let end = slot
                .iter()
                .rposition(|b| !matches!(b, 0 | b' ' | b'\n'))
                .map_or(0, |i| i + 1);
            serde_json::from_slice::<Head>(&slot[..end]).ok()
        })
        .filter(|head| head.mac == head_mac(key, head.count, &head.last_mac))
        .max_by_key(|head| head.count)
}

/// When the log starts a new segment: the active file is sealed (renamed to
/// `<log>.<first sequence, 20 digits>`) once it holds `max_bytes`, or once its first record is
/// `max_age` old. The chain runs on across segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Size at which the active segment is sealed.
    pub max_bytes: u64,
    /// Age (of its first record) at which the active segment is sealed; `None`: size only.
    pub max_age: Option<std::time::Duration>,
}

impl Default for Rotation {
    /// 64 MiB or a day, whichever comes first.
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            max_age: Some(std::time::Duration::from_secs(86_400)),
        }
    }
}

/// A sealed segment's file name: the log's, then the sequence of its first record.
pub fn segment_path(path: &Path, first_seq: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{first_seq:020}"));
    PathBuf::from(name)
}

/// The sealed segments of the log at `path`, oldest first, with their first sequence numbers.
pub fn sealed_segments(path: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(rest) = file_name
            .to_str()
            .and_then(|f| f.strip_prefix(name))
            .and_then(|f| f.strip_prefix('.'))
        else {
            continue;
        };
        if rest.len() == 20
            && rest.bytes().all(|b| b.is_ascii_digit())
            && let Ok(first) = rest.parse()
        {
            segments.push((first, entry.path()));
        }
    }
    segments.sort();
    Ok(segments)
}

/// An open audit log that appends decisions of one service.
#[derive(Debug)]
pub struct AuditLog {
    service: String,
    path: PathBuf,
    head_path: PathBuf,
    state: Mutex<Writer>,
    /// The turn of async callers ([`AuditLog::append_async`]): one at a time, so a call waiting
    /// for the writer yields its worker thread to other calls instead of parking it on the lock.
    turn: tokio::sync::Semaphore,
    appended: AtomicU64,
    failed: AtomicU64,
}

struct Writer {
    /// The active segment, opened for appending; `None` after a seal whose new file could not be
    /// made yet.
    file: Option<File>,
    /// The head file, kept open: one positioned write per record.
    head: File,
    key: hmac::Key,
    rotation: Rotation,
    next_seq: u64,
    last_mac: String,
    /// Bytes of whole, vouched-for records in the active segment: where a failed write is cut
    /// back to.
    active_len: u64,
    /// The sequence of the active segment's first record (its name once sealed).
    active_first_seq: u64,
    /// When the active segment's first record was written, ms since the epoch.
    active_started_ms: Option<u64>,
    /// A write failed and could not be cut back yet: cut back before the next one.
    needs_repair: bool,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Writer")
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl AuditLog {
    /// Opens (or creates) the log at `path` for `service`, keyed by the file `key_path`, with
    /// the default [`Rotation`].
    pub fn open(service: &str, path: &Path, key_path: &Path) -> Result<Self, AuditError> {
        Self::open_with(service, path, key_path, Rotation::default())
    }

    /// Opens (or creates) the log at `path`. An existing log must verify first: a chain is
    /// never continued on top of tampering. What a crash can leave is repaired, and the repair
    /// is itself recorded (a `recovered` record): a record cut short at the end of the active
    /// segment is cut off, and whole records written after the head's last update (the process
    /// died between the two writes; their macs prove they are ours) are vouched for.
    pub fn open_with(
        service: &str,
        path: &Path,
        key_path: &Path,
        rotation: Rotation,
    ) -> Result<Self, AuditError> {
        let key = read_key(key_path)?;
        let io = |at: &Path| {
            let at = at.display().to_string();
            move |source| AuditError::Io { path: at, source }
        };
        let broken = |problem| AuditError::Broken {
            path: path.display().to_string(),
            problem,
        };
        let fresh = !head_path(path).exists()
            && !path.exists()
            && sealed_segments(path).map_err(io(path))?.is_empty();
        if fresh {
            // A new chain starts with a head that vouches for zero records, so deleting every
            // record later is truncation, not an empty log.
            let (offset, bytes) = Head::new(&key, 0, "").slot();
            debug_assert_eq!(offset, 0);
            std::fs::write(head_path(path), bytes).map_err(io(&head_path(path)))?;
        }
        let chain = read_chain(path, &key, false).map_err(broken)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io(path))?;
        if chain.torn > 0 {
            file.set_len(chain.active_len).map_err(io(path))?;
        }
        let head = OpenOptions::new()
            .read(true)
            .write(true)
            .open(head_path(path))
            .map_err(io(&head_path(path)))?;
        let log = Self {
            service: service.to_owned(),
            path: path.to_owned(),
            head_path: head_path(path),
            state: Mutex::new(Writer {
                file: Some(file),
                head,
                key,
                rotation,
                next_seq: chain.next_seq,
                last_mac: chain.last_mac.clone(),
                active_len: chain.active_len,
                active_first_seq: chain.active_first_seq,
                active_started_ms: chain.active_started_ms,
                needs_repair: false,
            }),
            turn: tokio::sync::Semaphore::new(1),
            appended: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        };
        let unvouched = chain.next_seq - chain.vouched;
        if chain.torn > 0 || unvouched > 0 {
            let detail = format!(
                "cut {} bytes of a record cut short; vouched for {unvouched} records written after \
                 the head",
                chain.torn
            );
            tracing::warn!(path = %path.display(), %detail, "audit log recovered after a crash");
            log.append(&Decision {
                decision: "recovered",
                reason: "crash",
                subject: &detail,
                ..Decision::default()
            })?;
        }
        Ok(log)
    }

    /// The log's path (its active segment).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records appended since the log was opened, and appends that failed.
    pub fn appended_and_failed(&self) -> (u64, u64) {
        (
            self.appended.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    /// Appends one decision. A write failure (a full disk, say) is reported to the caller, who
    /// refuses the call; what was half written is cut back, so the chain stays whole and the
    /// next append, once there is room, continues it.
    pub fn append(&self, decision: &Decision<'_>) -> Result<(), AuditError> {
        let written = self.write_record(decision);
        let counter = if written.is_ok() {
            &self.appended
        } else {
            &self.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        written
    }

    /// [`AuditLog::append`] for a caller on an async worker: it waits for its turn without
    /// blocking the thread (under load, two workers appending at once would otherwise park one
    /// of them in the kernel on every contended record), then appends as `append` does.
    pub async fn append_async(&self, decision: &Decision<'_>) -> Result<(), AuditError> {
        // The semaphore is never closed, so the permit always comes.
        let _turn = self.turn.acquire().await;
        self.append(decision)
    }

    fn io(&self) -> impl Fn(std::io::Error) -> AuditError + '_ {
        |source| AuditError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }

    fn write_record(&self, decision: &Decision<'_>) -> Result<(), AuditError> {
        let mut writer = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let writer = &mut *writer;
        if writer.needs_repair {
            if let Some(file) = &writer.file {
                file.set_len(writer.active_len).map_err(self.io())?;
            }
            writer.needs_repair = false;
        }
        let now = now_ms();
        let aged = match (writer.rotation.max_age, writer.active_started_ms) {
            (Some(age), Some(started)) => now.saturating_sub(started) >= age.as_millis() as u64,
            _ => false,
        };
        if writer.active_len > 0 && (writer.active_len >= writer.rotation.max_bytes || aged) {
            self.seal(writer)?;
        }
        let file = match &mut writer.file {
            Some(file) => file,
            none => none.insert(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .map_err(self.io())?,
            ),
        };
        let seq = writer.next_seq;
        let (line, mac) = Unsigned {
            seq,
            time_ms: now,
            service: &self.service,
            decision: decision.decision,
            reason: decision.reason,
            method: decision.method,
            subject: decision.subject,
            actor: decision.actor,
            client: decision.client,
            peer: decision.peer,
            trace_id: decision.trace_id,
            policy: decision.policy,
            prev: &writer.last_mac,
        }
        .sign(&writer.key);
        let written = file.write_all(&line).map_err(self.io()).and_then(|()| {
            let (offset, bytes) = Head::new(&writer.key, seq + 1, &mac).slot();
            writer
                .head
                .write_all_at(&bytes, offset)
                .map_err(|source| AuditError::Io {
                    path: self.head_path.display().to_string(),
                    source,
                })
        });
        if let Err(error) = written {
            // Neither the record nor its head happened: take back what reached the file.
            writer.needs_repair = file.set_len(writer.active_len).is_err();
            return Err(error);
        }
        writer.active_len += line.len() as u64;
        writer.active_started_ms.get_or_insert(now);
        writer.next_seq += 1;
        writer.last_mac = mac;
        Ok(())
    }

    /// Seals the active segment under its first sequence number; the next record starts a new
    /// one. A crash between the rename and the next record leaves no active file, which opening
    /// accepts.
    fn seal(&self, writer: &mut Writer) -> Result<(), AuditError> {
        let sealed = segment_path(&self.path, writer.active_first_seq);
        std::fs::rename(&self.path, &sealed).map_err(self.io())?;
        writer.file = None;
        writer.active_len = 0;
        writer.active_first_seq = writer.next_seq;
        writer.active_started_ms = None;
        tracing::info!(segment = %sealed.display(), "audit log segment sealed");
        Ok(())
    }
}

fn head_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".head");
    PathBuf::from(name)
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The sequence number of the oldest record present (0 unless old segments were removed).
    pub first_seq: u64,
    /// Records present, all segments together.
    pub records: u64,
    /// Sealed segments, besides the active one.
    pub sealed_segments: usize,
}

/// Verifies the log at `path` (every sealed segment, then the active one) with the key in
/// `key_path`.
pub fn verify(path: &Path, key_path: &Path) -> Result<Verified, VerifyError> {
    let key = read_key(key_path).map_err(VerifyError::Open)?;
    let chain = read_chain(path, &key, true).map_err(VerifyError::Chain)?;
    if chain.torn > 0 {
        return Err(VerifyError::Chain(ChainProblem::TornTail {
            bytes: chain.torn,
        }));
    }
    Ok(Verified {
        first_seq: chain.first_seq,
        records: chain.next_seq - chain.first_seq,
        sealed_segments: chain.sealed_segments,
    })
}

/// Why verification could not say OK.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The key or the log could not be read.
    #[error(transparent)]
    Open(AuditError),
    /// The chain is broken.
    #[error(transparent)]
    Chain(ChainProblem),
}

/// The chain as found on disk.
#[derive(Debug)]
struct ChainState {
    /// The next record's sequence number, and the mac it follows.
    next_seq: u64,
    last_mac: String,
    /// The oldest record present.
    first_seq: u64,
    sealed_segments: usize,
    /// Where the active segment starts, its bytes of whole records, when it was started.
    active_first_seq: u64,
    active_len: u64,
    active_started_ms: Option<u64>,
    /// Bytes of a record cut short at the active segment's end.
    torn: u64,
    /// How many records the head vouches for.
    vouched: u64,
}

/// Where a file's records must continue: the sequence and the mac before them.
#[derive(Debug, Clone)]
struct Link {
    seq: u64,
    mac: String,
}

/// What one file held.
struct Scanned {
    /// Where its records end.
    end: Option<Link>,
    first_seq: Option<u64>,
    first_time_ms: Option<u64>,
    /// The mac of the record with sequence `mac_of`, if it is in this file.
    mac_at: Option<String>,
    complete_len: u64,
    torn: u64,
}

/// Reads and checks the records of one file: each one's mac, and that each follows the one
/// before (`after`: the last record of the previous file; `None` for the first file, which
/// starts the chain at 0, unless it is the oldest sealed segment left after older ones were
/// removed). A last line without its newline is a record cut short (`torn`) in the active
/// segment, unreadable in a sealed one.
fn scan(
    path: &Path,
    key: &hmac::Key,
    after: Option<&Link>,
    mac_of: u64,
    sealed: bool,
) -> Result<Scanned, ChainProblem> {
    let (torn_allowed, oldest_sealed) = (!sealed, sealed && after.is_none());
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(_) => return Err(ChainProblem::Unreadable { line: 0 }),
    };
    let complete_len = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let torn = (bytes.len() - complete_len) as u64;
    if torn > 0 && !torn_allowed {
        return Err(ChainProblem::Unreadable {
            line: bytes[..complete_len]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1,
        });
    }
    let mut scanned = Scanned {
        end: after.cloned(),
        first_seq: None,
        first_time_ms: None,
        mac_at: None,
        complete_len: complete_len as u64,
        torn,
    };
    let lines = match complete_len {
        0 => None,
        len => Some(bytes[..len - 1].split(|b| *b == b'\n')),
    };
    for (index, line) in lines.into_iter().flatten().enumerate() {
        let line_no = index + 1;
        let record: AuditRecord =
            serde_json::from_slice(line).map_err(|_| ChainProblem::Unreadable { line: line_no })?;
        if record.mac != mac(key, &record) {
            return Err(ChainProblem::Altered {
                line: line_no,
                seq: record.seq,
            });
        }
        let expected = match &scanned.end {
            Some(link) => Some((link.seq + 1, link.mac.as_str())),
            // The oldest sealed segment present may start later: older ones were removed.
            None if oldest_sealed && record.seq != 0 => None,
            None => Some((0, "")),
        };
        if let Some((expected_seq, expected_prev)) = expected
            && (record.seq != expected_seq || record.prev != expected_prev)
        {
            return Err(ChainProblem::OutOfChain {
                line: line_no,
                seq: record.seq,
                expected_seq,
            });
        }
        scanned.first_seq.get_or_insert(record.seq);
        scanned.first_time_ms.get_or_insert(record.time_ms);
        if record.seq == mac_of {
            scanned.mac_at = Some(record.mac.clone());
        }
        scanned.end = Some(Link {
            seq: record.seq,
            mac: record.mac,
        });
    }
    Ok(scanned)
}

/// The last record of a sealed segment, checked by its mac alone (opening does not re-read
/// whole sealed segments; `meshctl audit verify` does).
fn last_record(path: &Path, key: &hmac::Key) -> Result<Link, ChainProblem> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let bad = ChainProblem::InSegment {
        file: path.display().to_string(),
        problem: Box::new(ChainProblem::Unreadable { line: 0 }),
    };
    let mut file = File::open(path).map_err(|_| bad.clone())?;
    let len = file.metadata().map_err(|_| bad.clone())?.len();
    let from = len.saturating_sub(1 << 20);
    file.seek(SeekFrom::Start(from)).map_err(|_| bad.clone())?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).map_err(|_| bad.clone())?;
    let body = tail.strip_suffix(b"\n").ok_or_else(|| bad.clone())?;
    let line = body
        .rsplit(|b| *b == b'\n')
        .next()
        .ok_or_else(|| bad.clone())?;
    let record: AuditRecord = serde_json::from_slice(line).map_err(|_| bad.clone())?;
    if record.mac != mac(key, &record) {
        return Err(bad);
    }
    Ok(Link {
        seq: record.seq,
        mac: record.mac,
    })
}

/// Reads the chain: the sealed segments (all of them when `full`, else only the newest one's
/// last record), then the active segment, then the head.
fn read_chain(path: &Path, key: &hmac::Key, full: bool) -> Result<ChainState, ChainProblem> {
    let head = read_head(path, key).ok_or(ChainProblem::BadHead)?;
    let segments = sealed_segments(path).map_err(|_| ChainProblem::Unreadable { line: 0 })?;
    let vouched_mac_of = head.count.wrapping_sub(1);
    let mut link: Option<Link> = None;
    let mut first_seq = None;
    let mut vouched_mac = (head.count == 0).then(String::new);
    for (index, (first, segment)) in segments.iter().enumerate() {
        let in_segment = |problem| ChainProblem::InSegment {
            file: segment.display().to_string(),
            problem: Box::new(problem),
        };
        if full || index + 1 == segments.len() {
            let scanned = if full {
                scan(segment, key, link.as_ref(), vouched_mac_of, true).map_err(in_segment)?
            } else {
                let last = last_record(segment, key)?;
                Scanned {
                    mac_at: (last.seq == vouched_mac_of).then(|| last.mac.clone()),
                    end: Some(last),
                    first_seq: Some(*first),
                    first_time_ms: None,
                    complete_len: 0,
                    torn: 0,
                }
            };
            if scanned.first_seq != Some(*first) {
                return Err(in_segment(ChainProblem::Unreadable { line: 1 }));
            }
            first_seq.get_or_insert(*first);
            vouched_mac = vouched_mac.or(scanned.mac_at);
            link = scanned.end;
        } else {
            first_seq.get_or_insert(*first);
        }
    }
    let active = scan(path, key, link.as_ref(), vouched_mac_of, false)?;
    let next_seq = active.end.as_ref().map_or(0, |end| end.seq + 1);
    let last_mac = active.end.map(|end| end.mac).unwrap_or_default();
    let first_seq = first_seq.or(active.first_seq).unwrap_or(next_seq);
    if head.count > next_seq {
        return Err(ChainProblem::Truncated {
            found: next_seq,
            expected: head.count,
        });
    }
    // Records past the head are ours (their macs say so) if the head's last record is among
    // them: the process stopped between a record and its head.
    if vouched_mac.or(active.mac_at).as_deref() != Some(head.last_mac.as_str()) {
        return Err(ChainProblem::BadHead);
    }
    Ok(ChainState {
        next_seq,
        last_mac,
        first_seq,
        sealed_segments: segments.len(),
        active_first_seq: active.first_seq.unwrap_or(next_seq),
        active_len: active.complete_len,
        active_started_ms: active.first_time_ms,
        torn: active.torn,
        vouched: head.count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_signed_from_one_serialization_is_the_signed_record_byte_for_byte() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &[7; 32]);
        // Without a policy version (records from before versions, and the issuer's own) and with.
        for policy in ["", "0123456789ab"] {
            let unsigned = Unsigned {
                seq: 41,
                time_ms: 1_700_000_000_000,
                service: "orders",
                decision: "deny",
                reason: "wrong_audience",
                method: "/shop.v1.Shop/Buy",
                subject: "alice \"quoted\" \u{e9}\n",
                actor: "",
                client: "meshctl",
                peer: "spiffe://mesh.local/sa/meshctl",
                trace_id: "",
                policy,
                prev: "00ff",
            };
            let (line, signed) = unsigned.sign(&key);
            assert_eq!(
                String::from_utf8_lossy(&line).contains("\"policy\""),
                !policy.is_empty()
            );
            let record: AuditRecord = serde_json::from_slice(&line).expect("a record");
            assert_eq!(record.policy, policy);
            let mut expected = serde_json::to_vec(&record).expect("json");
            expected.push(b'\n');
            assert_eq!(
                String::from_utf8_lossy(&line),
                String::from_utf8_lossy(&expected)
            );
            assert_eq!(record.mac, signed);
            assert_eq!(mac(&key, &record), signed, "what verify recomputes");
        }
        assert_eq!(hex(&[0x00, 0x9a, 0xff]), "009aff");
    }

    #[test]
    fn a_written_key_is_hex_text_that_reads_back_as_32_bytes() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("audit.key");
        write_new_key(&path).expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.trim_end().len(), 64);
        assert!(text.trim_end().bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(matches!(parse_key(text.as_bytes()), Ok(KeyBytes::Hex(k)) if k.len() == 32));
        assert!(
            write_new_key(&path).is_err(),
            "an existing key is never replaced"
        );
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_raw_key_ending_in_a_newline_byte_is_read_whole_and_opens_a_log() {
        // 32 random-looking bytes whose last one is 0x0a: what `head -c 32 /dev/urandom` gives
        // about once in 128 keys, once trimmed and refused as too short.
        let mut raw: Vec<u8> = (0..31u8)
            .map(|i| i.wrapping_mul(37).wrapping_add(0x80))
            .collect();
        raw.push(b'\n');
        assert_eq!(parse_key(&raw), Ok(KeyBytes::Legacy(raw.clone())));
        let dir = tempfile::tempdir().expect("dir");
        let key = dir.path().join("audit.key");
        std::fs::write(&key, &raw).expect("key");
        let log = AuditLog::open("orders", &dir.path().join("audit.jsonl"), &key).expect("opens");
        log.append(&Decision {
            decision: "allow",
            reason: "policy",
            ..Decision::default()
        })
        .expect("append");
    }

    #[test]
    fn a_legacy_key_reads_as_it_always_did_so_old_chains_verify() {
        // Accepted before as "40 bytes, trailing newline dropped": still exactly those bytes.
        let mut file = vec![0xEEu8; 40];
        file.push(b'\n');
        assert_eq!(parse_key(&file), Ok(KeyBytes::Legacy(vec![0xEE; 40])));
    }

    #[test]
    fn short_or_malformed_keys_are_refused_with_how_to_make_one() {
        for bad in [
            &b"0123456789abcdef0123456789abcdef"[..],
            b"abc",
            b"",
            b"\n\n",
            &[0x01; 20],
        ] {
            let error = parse_key(bad).expect_err("refused");
            assert!(error.contains("meshctl audit keygen"), "{error}");
        }
        let odd = "a".repeat(65);
        assert!(
            parse_key(odd.as_bytes())
                .expect_err("odd")
                .contains("odd number")
        );
    }

    fn setup(records: usize) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().expect("dir");
        let key = dir.path().join("audit.key");
        write_new_key(&key).expect("key");
        let log_path = dir.path().join("audit.jsonl");
        let log = AuditLog::open("inventory", &log_path, &key).expect("open");
        for i in 0..records {
            let method = format!("/svc/M{i}");
            log.append(&Decision {
                decision: "allow",
                reason: "policy",
                method: &method,
                subject: "alice",
                ..Decision::default()
            })
            .expect("append");
        }
        (dir, log_path, key)
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .expect("read")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn write(path: &Path, lines: &[String]) {
        std::fs::write(path, lines.join("\n") + "\n").expect("write");
    }

    #[test]
    fn an_empty_log_verifies_and_emptying_a_log_is_truncation() {
        let (_dir, log, key) = setup(0);
        assert_eq!(verify(&log, &key).expect("ok").records, 0);
        AuditLog::open("inventory", &log, &key).expect("reopen an empty log");
        let (_dir, log, key) = setup(2);
        std::fs::write(&log, "").expect("empty");
        assert!(matches!(
            verify(&log, &key),
            Err(VerifyError::Chain(ChainProblem::Truncated {
                found: 0,
                expected: 2
            }))
        ));
    }

    #[test]
    fn an_untouched_log_verifies_and_reopening_continues_the_chain() {
        let (_dir, log, key) = setup(5);
        assert_eq!(verify(&log, &key).expect("ok").records, 5);
        let reopened = AuditLog::open("inventory", &log, &key).expect("reopen");
        reopened.append(&Decision::default()).expect("append");
        assert_eq!(verify(&log, &key).expect("ok").records, 6);
    }

    #[test]
    fn editing_a_record_is_detected() {
        let (_dir, log, key) = setup(5);
        let mut all = lines(&log);
        all[2] = all[2].replace("alice", "mallory");
        write(&log, &all);
        let problem = verify(&log, &key).expect_err("altered");
        assert!(
            matches!(
                problem,
                VerifyError::Chain(ChainProblem::Altered { line: 3, seq: 2 })
            ),
            "{problem}"
        );
    }

    #[test]
    fn deleting_a_record_is_detected() {
        let (_dir, log, key) = setup(5);
        let mut all = lines(&log);
        all.remove(1);
        write(&log, &all);
        let problem = verify(&log, &key).expect_err("removed");
        assert!(
            matches!(
                problem,
                VerifyError::Chain(ChainProblem::OutOfChain { line: 2, .. })
            ),
            "{problem}"
        );
    }

    #[test]
    fn reordering_records_is_detected() {
        let (_dir, log, key) = setup(5);
        let mut all = lines(&log);
        all.swap(1, 3);
        write(&log, &all);
        let problem = verify(&log, &key).expect_err("reordered");
        assert!(
            matches!(
                problem,
                VerifyError::Chain(ChainProblem::OutOfChain { line: 2, .. })
            ),
            "{problem}"
        );
    }

    #[test]
    fn truncating_the_log_is_detected() {
        let (_dir, log, key) = setup(5);
        let all = lines(&log);
        write(&log, &all[..3]);
        let problem = verify(&log, &key).expect_err("truncated");
        assert!(
            matches!(
                problem,
                VerifyError::Chain(ChainProblem::Truncated {
                    found: 3,
                    expected: 5
                })
            ),
            "{problem}"
        );
        // Cut in the middle of a line.
        let text = std::fs::read_to_string(&log).expect("read");
        std::fs::write(&log, &text[..text.len() - 10]).expect("write");
        assert!(verify(&log, &key).is_err());
    }

    #[test]
    fn a_forged_chain_without_the_key_does_not_verify_and_is_not_continued() {
        let (dir, log, _key) = setup(3);
        let other = dir.path().join("other.key");
        std::fs::write(&other, "x".repeat(40)).expect("key");
        assert!(verify(&log, &other).is_err());
        assert!(AuditLog::open("inventory", &log, &other).is_err());
        let short = dir.path().join("short.key");
        std::fs::write(&short, "short").expect("key");
        assert!(matches!(read_key(&short), Err(AuditError::Key { .. })));
    }

    fn records(path: &Path) -> Vec<AuditRecord> {
        lines(path)
            .iter()
            .map(|l| serde_json::from_str(l).expect("record"))
            .collect()
    }

    #[test]
    fn a_record_cut_short_by_a_crash_is_cut_off_and_recorded_at_the_next_open() {
        let (_dir, log, key) = setup(3);
        let mut file = OpenOptions::new().append(true).open(&log).expect("open");
        file.write_all(br#"{"seq":3,"time_ms":17,"serv"#)
            .expect("torn");
        drop(file);
        assert!(matches!(
            verify(&log, &key),
            Err(VerifyError::Chain(ChainProblem::TornTail { bytes: 27 }))
        ));
        let reopened = AuditLog::open("inventory", &log, &key).expect("recovers");
        reopened.append(&Decision::default()).expect("append");
        assert_eq!(verify(&log, &key).expect("ok").records, 5);
        let all = records(&log);
        assert_eq!(all[3].decision, "recovered");
        assert!(
            all[3].subject.contains("cut 27 bytes"),
            "{}",
            all[3].subject
        );
    }

    #[test]
    fn a_record_written_before_a_crash_stopped_its_head_is_vouched_for_at_the_next_open() {
        let (_dir, log, key) = setup(3);
        let head_before = std::fs::read(head_path(&log)).expect("head");
        AuditLog::open("inventory", &log, &key)
            .expect("open")
            .append(&Decision::default())
            .expect("append");
        // The head as it was before the fourth record: the process died between the writes.
        std::fs::write(head_path(&log), &head_before).expect("old head");
        let reopened = AuditLog::open("inventory", &log, &key).expect("recovers");
        drop(reopened);
        let all = records(&log);
        assert_eq!(all.len(), 5);
        assert_eq!(all[4].decision, "recovered");
        assert!(
            all[4].subject.contains("vouched for 1 records"),
            "{}",
            all[4].subject
        );
        assert_eq!(verify(&log, &key).expect("ok").records, 5);
        // Records cut off the end are still truncation, whatever the crash story.
        write(&log, &lines(&log)[..3]);
        assert!(matches!(
            verify(&log, &key),
            Err(VerifyError::Chain(ChainProblem::Truncated { .. }))
        ));
    }

    #[test]
    fn a_head_write_cut_short_leaves_the_other_slot_to_open_with() {
        let (_dir, log, key) = setup(4);
        // The slot of the last head (count 4) is spoiled half-way; count 3's slot is whole.
        let mut head = std::fs::read(head_path(&log)).expect("head");
        head[10..HEAD_SLOT].fill(b'#');
        std::fs::write(head_path(&log), &head).expect("torn head");
        let reopened = AuditLog::open("inventory", &log, &key).expect("recovers");
        drop(reopened);
        assert_eq!(records(&log).last().expect("record").decision, "recovered");
        assert_eq!(verify(&log, &key).expect("ok").records, 5);
    }

    #[test]
    fn segments_seal_by_size_and_age_and_the_chain_runs_across_them() {
        let dir = tempfile::tempdir().expect("dir");
        let key = dir.path().join("audit.key");
        write_new_key(&key).expect("key");
        let log_path = dir.path().join("audit.jsonl");
        let small = Rotation {
            max_bytes: 2_000,
            max_age: None,
        };
        let log = AuditLog::open_with("orders", &log_path, &key, small).expect("open");
        for _ in 0..40 {
            log.append(&Decision {
                decision: "allow",
                method: "/svc/Method",
                ..Decision::default()
            })
            .expect("append");
        }
        drop(log);
        let segments = sealed_segments(&log_path).expect("segments");
        assert!(segments.len() >= 5, "{segments:?}");
        assert_eq!(segments[0].0, 0);
        let verified = verify(&log_path, &key).expect("ok");
        assert_eq!((verified.first_seq, verified.records), (0, 40));
        assert_eq!(verified.sealed_segments, segments.len());

        // Reopened, the chain goes on in the active segment.
        let log = AuditLog::open_with("orders", &log_path, &key, small).expect("reopen");
        log.append(&Decision::default()).expect("append");
        drop(log);
        assert_eq!(verify(&log_path, &key).expect("ok").records, 41);

        // Retention removes the oldest segment: reported, not an error. A segment missing in
        // the middle, or one altered, is.
        std::fs::remove_file(&segments[0].1).expect("retention");
        let verified = verify(&log_path, &key).expect("ok");
        assert_eq!(verified.first_seq, segments[1].0);
        let middle = &segments[2].1;
        let kept = std::fs::read(middle).expect("read");
        std::fs::remove_file(middle).expect("remove");
        assert!(matches!(
            verify(&log_path, &key),
            Err(VerifyError::Chain(ChainProblem::InSegment { .. }))
        ));
        let altered = String::from_utf8(kept)
            .expect("utf8")
            .replace("allow", "deny!");
        std::fs::write(middle, altered).expect("alter");
        let problem = verify(&log_path, &key).expect_err("altered");
        assert!(problem.to_string().contains("was altered"), "{problem}");

        // By age: every record older than the segment's limit starts a new one.
        let aged = dir.path().join("aged.jsonl");
        let by_age = Rotation {
            max_bytes: u64::MAX,
            max_age: Some(std::time::Duration::from_millis(1)),
        };
        let log = AuditLog::open_with("orders", &aged, &key, by_age).expect("open");
        for _ in 0..3 {
            log.append(&Decision::default()).expect("append");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        drop(log);
        assert_eq!(sealed_segments(&aged).expect("segments").len(), 2);
        assert_eq!(verify(&aged, &key).expect("ok").records, 3);
    }

    /// One test, two roles: run plainly, it starts itself again as a writer that appends as fast
    /// as it can, kills it at varying moments (mid-record, between record and head, anywhere),
    /// and checks that every kill leaves a log that opens; at the end the chain verifies.
    #[test]
    fn a_writer_killed_at_any_moment_leaves_a_log_that_opens_and_verifies() {
        const ROLE: &str = "AUDIT_KILLED_WRITER_LOG";
        if let Some(log) = std::env::var_os(ROLE) {
            let log = PathBuf::from(log);
            let key = log.with_extension("key");
            let writer = AuditLog::open("orders", &log, &key).expect("the writer opens");
            loop {
                writer
                    .append(&Decision {
                        decision: "allow",
                        method: "/svc/Method",
                        subject: "someone with a longer name to make records longer",
                        ..Decision::default()
                    })
                    .expect("append");
            }
        }
        let dir = tempfile::tempdir().expect("dir");
        let log = dir.path().join("audit.jsonl");
        let key = log.with_extension("key");
        write_new_key(&key).expect("key");
        let mut recovered = 0;
        for round in 0..20u64 {
            let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
                .args([
                    "--exact",
                    "audit::tests::a_writer_killed_at_any_moment_leaves_a_log_that_opens_and_verifies",
                    "--nocapture",
                ])
                .env(ROLE, &log)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("writer");
            let before = std::fs::metadata(&log).map_or(0, |m| m.len());
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while std::fs::metadata(&log).map_or(0, |m| m.len()) <= before {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the writer never wrote"
                );
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            std::thread::sleep(std::time::Duration::from_micros(round * 731 % 9_000));
            child.kill().expect("kill");
            child.wait().expect("wait");
            let reopened = AuditLog::open("orders", &log, &key)
                .unwrap_or_else(|e| panic!("round {round}: the killed writer's log: {e}"));
            drop(reopened);
            recovered = records(&log)
                .iter()
                .filter(|r| r.decision == "recovered")
                .count();
        }
        let verified = verify(&log, &key).expect("the chain verifies after 20 kills");
        eprintln!(
            "20 kills: {} records, {recovered} recoveries recorded",
            verified.records
        );
    }
}
