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
}
