//! The users who log in through the authorization-code flow, and what their roles grant.

use std::collections::{BTreeSet, HashMap};

use crate::settings::AuthConfig;

/// A user, as tokens see them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Login name and token `sub`.
    pub username: String,
    /// Every scope the user's roles grant.
    pub scopes: BTreeSet<String>,
}

/// The user directory from `MESH_AUTH_CONFIG`.
#[derive(Debug)]
pub struct Users {
    by_name: HashMap<String, (String, User)>,
}

impl Users {
    /// The directory of `config` (already checked: every role exists).
    pub fn new(config: &AuthConfig) -> Self {
        let by_name = config
            .users
            .iter()
            .map(|u| {
                let scopes = u
                    .roles
                    .iter()
                    .filter_map(|r| config.roles.get(r))
                    .flatten()
                    .cloned()
                    .collect();
                let user = User {
                    username: u.username.clone(),
                    scopes,
                };
                (u.username.clone(), (u.password_hash.clone(), user))
            })
            .collect();
        Self { by_name }
    }

    /// The user named `username`.
    pub fn get(&self, username: &str) -> Option<&User> {
        self.by_name.get(username).map(|(_, user)| user)
    }

    /// Checks a password; unknown users and wrong passwords both take one Argon2 verification.
    /// Call from a blocking thread.
    pub fn authenticate(
        &self,
        username: &str,
        password: &str,
        slot: &mut crate::passwords::HashSlot,
    ) -> Option<User> {
        let entry = self.by_name.get(username);
        let hash = entry.map_or(crate::passwords::DUMMY_HASH, |(hash, _)| hash.as_str());
        let matches = slot.verify(hash, password.as_bytes());
        entry.filter(|_| matches).map(|(_, user)| user.clone())
    }
}
