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
use std::io::{BufRead, BufReader, Write};
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

fn mac(key: &hmac::Key, record: &AuditRecord) -> String {
    let mut unsigned = record.clone();
    unsigned.mac.clear();
    let body = serde_json::to_vec(&unsigned).unwrap_or_default();
    let mut context = hmac::Context::with_key(key);
    context.update(record.prev.as_bytes());
    context.update(&body);
    hex(context.sign().as_ref())
}

fn head_mac(key: &hmac::Key, count: u64, last_mac: &str) -> String {
    hex(hmac::sign(key, format!("head:{count}:{last_mac}").as_bytes()).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Serialize, Deserialize)]
struct Head {
    count: u64,
    last_mac: String,
    mac: String,
}

/// An open audit log that appends decisions of one service.
#[derive(Debug)]
pub struct AuditLog {
    service: String,
    path: PathBuf,
    head_path: PathBuf,
    state: Mutex<Writer>,
    appended: AtomicU64,
    failed: AtomicU64,
}

struct Writer {
    file: File,
    /// The head file, kept open: rewritten in place after every record (one positioned write
    /// instead of open + truncate + write + close).
    head: File,
    head_len: u64,
    key: hmac::Key,
    next_seq: u64,
    last_mac: String,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Writer")
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (or creates) the log at `path` for `service`, keyed by the file `key_path`. An
    /// existing log must verify first: a chain is never continued on top of tampering.
    pub fn open(service: &str, path: &Path, key_path: &Path) -> Result<Self, AuditError> {
        let key = read_key(key_path)?;
        let io = |source| AuditError::Io {
            path: path.display().to_string(),
            source,
        };
        let (next_seq, last_mac) = if path.exists() {
            let (count, last) = verify_with(path, &key).map_err(|problem| AuditError::Broken {
                path: path.display().to_string(),
                problem,
            })?;
            (count, last)
        } else {
            // A new chain starts with a head that vouches for zero records, so deleting every
            // record later is truncation, not an empty log.
            let head = Head {
                count: 0,
                last_mac: String::new(),
                mac: head_mac(&key, 0, ""),
            };
            std::fs::write(
                head_path(path),
                serde_json::to_vec(&head).unwrap_or_default(),
            )
            .map_err(|source| AuditError::Io {
                path: head_path(path).display().to_string(),
                source,
            })?;
            (0, String::new())
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        let head_io = |source| AuditError::Io {
            path: head_path(path).display().to_string(),
            source,
        };
        let head = OpenOptions::new()
            .read(true)
            .write(true)
            .open(head_path(path))
            .map_err(head_io)?;
        let head_len = head.metadata().map_err(head_io)?.len();
        Ok(Self {
            service: service.to_owned(),
            path: path.to_owned(),
            head_path: head_path(path),
            state: Mutex::new(Writer {
                file,
                head,
                head_len,
                key,
                next_seq,
                last_mac,
            }),
            appended: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    }

    /// The log's path.
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

    /// Appends one decision. A write failure is reported to the caller, who decides; the chain
    /// stays consistent because the in-memory head only moves after a successful write.
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

    fn write_record(&self, decision: &Decision<'_>) -> Result<(), AuditError> {
        let mut writer = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut record = AuditRecord {
            seq: writer.next_seq,
            time_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            service: self.service.clone(),
            decision: decision.decision.to_owned(),
            reason: decision.reason.to_owned(),
            method: decision.method.to_owned(),
            subject: decision.subject.to_owned(),
            actor: decision.actor.to_owned(),
            client: decision.client.to_owned(),
            peer: decision.peer.to_owned(),
            trace_id: decision.trace_id.to_owned(),
            prev: writer.last_mac.clone(),
            mac: String::new(),
        };
        record.mac = mac(&writer.key, &record);
        let mut line = serde_json::to_vec(&record).unwrap_or_default();
        line.push(b'\n');
        let io = |source| AuditError::Io {
            path: self.path.display().to_string(),
            source,
        };
        writer.file.write_all(&line).map_err(io)?;
        writer.file.flush().map_err(io)?;
        let head = Head {
            count: record.seq + 1,
            last_mac: record.mac.clone(),
            mac: head_mac(&writer.key, record.seq + 1, &record.mac),
        };
        let head_io = |source| AuditError::Io {
            path: self.head_path.display().to_string(),
            source,
        };
        let bytes = serde_json::to_vec(&head).unwrap_or_default();
        writer.head.write_all_at(&bytes, 0).map_err(head_io)?;
        // The head only grows (the count gains digits); cut it only if it ever shrinks.
        if (bytes.len() as u64) < writer.head_len {
            writer.head.set_len(bytes.len() as u64).map_err(head_io)?;
        }
        writer.head_len = bytes.len() as u64;
        writer.next_seq += 1;
        writer.last_mac = record.mac;
        Ok(())
    }
}

fn head_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".head");
    PathBuf::from(name)
}

/// Verifies the log at `path` with the key in `key_path`; returns the number of records.
pub fn verify(path: &Path, key_path: &Path) -> Result<u64, VerifyError> {
    let key = read_key(key_path).map_err(VerifyError::Open)?;
    verify_with(path, &key)
        .map(|(count, _)| count)
        .map_err(VerifyError::Chain)
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

fn verify_with(path: &Path, key: &hmac::Key) -> Result<(u64, String), ChainProblem> {
    let file = File::open(path).map_err(|_| ChainProblem::Unreadable { line: 0 })?;
    let mut expected_seq = 0u64;
    let mut last_mac = String::new();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let line_no = index + 1;
        let line = line.map_err(|_| ChainProblem::Unreadable { line: line_no })?;
        let record: AuditRecord =
            serde_json::from_str(&line).map_err(|_| ChainProblem::Unreadable { line: line_no })?;
        if record.mac != mac(key, &record) {
            return Err(ChainProblem::Altered {
                line: line_no,
                seq: record.seq,
            });
        }
        if record.seq != expected_seq || record.prev != last_mac {
            return Err(ChainProblem::OutOfChain {
                line: line_no,
                seq: record.seq,
                expected_seq,
            });
        }
        expected_seq += 1;
        last_mac = record.mac;
    }
    let head: Head = std::fs::read(head_path(path))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or(ChainProblem::BadHead)?;
    if head.mac != head_mac(key, head.count, &head.last_mac) {
        return Err(ChainProblem::BadHead);
    }
    if head.count > expected_seq {
        return Err(ChainProblem::Truncated {
            found: expected_seq,
            expected: head.count,
        });
    }
    if head.count < expected_seq || head.last_mac != last_mac {
        return Err(ChainProblem::BadHead);
    }
    Ok((expected_seq, last_mac))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(verify(&log, &key).expect("ok"), 0);
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
        assert_eq!(verify(&log, &key).expect("ok"), 5);
        let reopened = AuditLog::open("inventory", &log, &key).expect("reopen");
        reopened.append(&Decision::default()).expect("append");
        assert_eq!(verify(&log, &key).expect("ok"), 6);
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
}
