//! Password and client-secret checks in a fixed memory budget.
//!
//! An Argon2id check of our parameters (`m=19456`) works in 19 MiB of memory. Letting the
//! library allocate it per check is not bounded by the number of checks at once: once the
//! allocator has seen a block that large freed, it keeps later ones in the arena of whichever
//! blocking thread ran the check, so ten checks spread over ten pool threads leave ~190 MiB
//! resident (measured: `auth-service` peak RSS +190 MiB after 10 checks, with 2 at a time). Here
//! each of the few [`HashSlot`]s owns its working memory, reused by every check it runs: the
//! service's Argon2 memory is at most `concurrent_hashes` × the largest `m` of its hashes.

use std::sync::{Arc, Mutex};

use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The slots and their memory.
#[derive(Debug)]
pub struct HashSlots {
    permits: Arc<Semaphore>,
    memory: Arc<Mutex<Vec<Vec<Block>>>>,
}

impl HashSlots {
    /// `count` slots (at least one).
    pub fn new(count: u32) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(count.max(1) as usize)),
            memory: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// A free slot, when one is free within `wait`.
    pub async fn take(&self, wait: std::time::Duration) -> Option<HashSlot> {
        let permit = tokio::time::timeout(wait, self.permits.clone().acquire_owned())
            .await
            .ok()?
            .ok()?;
        let memory = self
            .memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_default();
        Some(HashSlot {
            _permit: permit,
            memory,
            pool: self.memory.clone(),
        })
    }
}

/// The right to run one Argon2 check now, with the memory to run it in. Move it into the
/// blocking task that checks: it is given back when that task is done, even if the request that
/// asked has gone.
#[derive(Debug)]
pub struct HashSlot {
    _permit: OwnedSemaphorePermit,
    memory: Vec<Block>,
    pool: Arc<Mutex<Vec<Vec<Block>>>>,
}

impl HashSlot {
    /// Whether `password` is the one the PHC string `phc` (Argon2d, i or id) was made from,
    /// compared in constant time. CPU-bound for tens of milliseconds: call it off the async
    /// workers.
    pub fn verify(&mut self, phc: &str, password: &[u8]) -> bool {
        self.try_verify(phc, password).unwrap_or(false)
    }

    fn try_verify(&mut self, phc: &str, password: &[u8]) -> Option<bool> {
        let hash = PasswordHash::new(phc).ok()?;
        let algorithm = Algorithm::try_from(hash.algorithm).ok()?;
        let version = match hash.version {
            Some(v) => Version::try_from(v).ok()?,
            None => Version::default(),
        };
        let params = Params::try_from(&hash).ok()?;
        let expected = hash.hash?;
        let mut salt = [0u8; 64];
        let salt = hash.salt?.decode_b64(&mut salt).ok()?;
        let blocks = params.block_count();
        if self.memory.len() < blocks {
            self.memory.resize(blocks, Block::default());
        }
        let mut out = vec![0u8; expected.len()];
        Argon2::new(algorithm, version, params)
            .hash_password_into_with_memory(password, salt, &mut out, &mut self.memory[..blocks])
            .ok()?;
        Some(aws_lc_rs::constant_time::verify_slices_are_equal(&out, expected.as_bytes()).is_ok())
    }
}

impl Drop for HashSlot {
    fn drop(&mut self) {
        let memory = std::mem::take(&mut self.memory);
        self.pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(memory);
    }
}

/// The PHC algorithm id of a generated client secret's hash: HMAC-SHA256 keyed by a random salt.
pub const GENERATED_SECRET_ALGORITHM: &str = "hmac-sha256";

/// Makes a client secret of 256 random bits (base64url, 43 characters) and its hash
/// (`$hmac-sha256$<salt>$<mac>`), what `meshctl hash-secret --generate` prints.
///
/// Argon2 is there to make guessing a *chosen* secret slow. A secret of 256 random bits cannot
/// be guessed however fast each guess is, so its hash needs no work factor: a keyed hash checks
/// it in a microsecond instead of tens of milliseconds, and the token endpoint serves machine
/// clients at thousands of grants per second instead of tens.
pub fn generate_secret() -> (String, String) {
    use base64::Engine as _;
    use rand::RngCore as _;
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let hash = fast_hash(&secret);
    (secret, hash)
}

fn fast_hash(secret: &str) -> String {
    use base64::Engine as _;
    use rand::RngCore as _;
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    format!(
        "${GENERATED_SECRET_ALGORITHM}${}${}",
        b64.encode(salt),
        b64.encode(mac(&salt, secret.as_bytes()))
    )
}

fn mac(salt: &[u8], secret: &[u8]) -> aws_lc_rs::hmac::Tag {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, salt);
    aws_lc_rs::hmac::sign(&key, secret)
}

/// A generated secret's hash, parsed once, its HMAC key made at parse time (the config is
/// parsed at start, so no request builds a key).
#[derive(Clone)]
pub struct FastHash {
    key: aws_lc_rs::hmac::Key,
    mac: Vec<u8>,
}

impl std::fmt::Debug for FastHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FastHash(..)")
    }
}

impl FastHash {
    /// Parses `$hmac-sha256$<salt>$<mac>`: `Ok(None)` for another algorithm (an Argon2 hash),
    /// `Err` for a malformed one (a salt under 16 bytes, a MAC that is not 32).
    pub fn parse(phc: &str) -> Result<Option<Self>, String> {
        let hash = PasswordHash::new(phc).map_err(|e| format!("not a PHC string: {e}"))?;
        if hash.algorithm.as_str() != GENERATED_SECRET_ALGORITHM {
            return Ok(None);
        }
        let mut salt = [0u8; 64];
        let salt = hash
            .salt
            .ok_or("no salt")?
            .decode_b64(&mut salt)
            .map_err(|e| format!("salt: {e}"))?;
        let mac = hash.hash.ok_or("no hash")?;
        if salt.len() < 16 || mac.len() != 32 || hash.version.is_some() {
            return Err(format!(
                "{GENERATED_SECRET_ALGORITHM} takes a salt of at least 16 bytes and a 32-byte MAC"
            ));
        }
        Ok(Some(Self {
            key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, salt),
            mac: mac.as_bytes().to_vec(),
        }))
    }

    /// Whether `secret` is the one this hash was made from, compared in constant time.
    pub fn verify(&self, secret: &[u8]) -> bool {
        aws_lc_rs::hmac::verify(&self.key, secret, &self.mac).is_ok()
    }
}

/// What an unknown client or user is checked against, so that it costs one Argon2 verification
/// like a wrong secret: an Argon2id hash, with [`hash_secret`]'s parameters, of 32 random bytes
/// nobody kept. A constant rather than a hash computed at start: that hash's 19 MiB of working
/// memory stayed with the allocator, half of the auth service's idle RSS.
pub const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$ihZfbub7rfa/zGBn33yYzw$tYbsQHCTh2iM3SUXMoxOcK2vcM/A1KmeLrG2QkZ7EJ8";

/// Hashes a secret as an Argon2id PHC string (what `meshctl hash-secret` prints).
pub fn hash_secret(secret: &str) -> Result<String, argon2::password_hash::Error> {
    use argon2::password_hash::PasswordHasher as _;
    let salt =
        argon2::password_hash::SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Ok(argon2::Argon2::default()
        .hash_password(secret.as_bytes(), &salt)?
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_slot_verifies_what_the_library_hashed_and_refuses_anything_else() {
        let slots = HashSlots::new(1);
        let phc = hash_secret("s3cret").expect("hash");
        let mut slot = slots.take(Duration::from_secs(1)).await.expect("slot");
        assert!(slot.verify(&phc, b"s3cret"));
        assert!(!slot.verify(&phc, b"s3cre"));
        assert!(!slot.verify("not a phc string", b"s3cret"));
        // The only slot is taken: nobody else hashes until it is given back.
        assert!(slots.take(Duration::from_millis(20)).await.is_none());
        drop(slot);
        let mut again = slots.take(Duration::from_secs(1)).await.expect("slot");
        assert_eq!(
            again.memory.len(),
            19 * 1024,
            "the memory is kept and reused"
        );
        assert!(again.verify(&phc, b"s3cret"));
    }

    #[test]
    fn the_dummy_hash_costs_what_a_real_one_does() {
        let real = hash_secret("s3cret-s3cret-16").expect("hash");
        let real = PasswordHash::new(&real).expect("phc");
        let dummy = PasswordHash::new(DUMMY_HASH).expect("phc");
        assert_eq!(
            (dummy.algorithm, dummy.version, dummy.params.to_string()),
            (real.algorithm, real.version, real.params.to_string())
        );
    }

    #[test]
    fn a_generated_secret_verifies_against_its_hash_only() {
        let (secret, phc) = generate_secret();
        assert_eq!(secret.len(), 43);
        let hash = FastHash::parse(&phc).expect("valid").expect("fast");
        assert!(hash.verify(secret.as_bytes()));
        assert!(!hash.verify(&secret.as_bytes()[1..]));
        let (_, other) = generate_secret();
        let other = FastHash::parse(&other).expect("valid").expect("fast");
        assert!(
            !other.verify(secret.as_bytes()),
            "each hash has its own salt"
        );
        // An Argon2 hash is not ours to check; a truncated MAC is refused, not accepted.
        assert!(
            FastHash::parse(&hash_secret("s3cret-s3cret-16").expect("hash"))
                .expect("valid")
                .is_none()
        );
        let short = &phc[..phc.len() - 4];
        assert!(FastHash::parse(short).is_err());
    }
}
