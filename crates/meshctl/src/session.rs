//! The session file `meshctl login` writes: the rotating refresh token and the access tokens
//! bought with it, readable by the user only (0600), replaced atomically.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use mesh_dev::oauth::{TokenError, TokenResponse, refresh};
use serde::{Deserialize, Serialize};

/// The tokens kept between runs, in a file only the user can read (0600).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    /// The issuer the tokens are from.
    pub issuer: String,
    /// The current refresh token (rotated on every use).
    pub refresh_token: String,
    /// Access tokens by audience.
    #[serde(default)]
    pub access: BTreeMap<String, CachedAccess>,
}

/// An access token and when it expires.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedAccess {
    /// The token.
    pub token: String,
    /// Expiry, seconds since the epoch.
    pub expires_at: u64,
}

impl Session {
    /// A session from a fresh login for `audience`.
    pub fn from_login(issuer: &str, audience: &str, response: TokenResponse) -> Option<Self> {
        let mut session = Self {
            issuer: issuer.to_owned(),
            refresh_token: response.refresh_token.clone()?,
            access: BTreeMap::new(),
        };
        session.remember(audience, &response);
        Some(session)
    }

    fn remember(&mut self, audience: &str, response: &TokenResponse) {
        self.access.insert(
            audience.to_owned(),
            CachedAccess {
                token: response.access_token.clone(),
                expires_at: now() + response.expires_in,
            },
        );
        if let Some(next) = &response.refresh_token {
            self.refresh_token = next.clone();
        }
    }

    /// An access token for `audience`: the cached one while it has 30 s left, else a new one
    /// bought with the refresh token (which rotates; the caller must save the session).
    pub async fn access_token(
        &mut self,
        http: &reqwest::Client,
        audience: &str,
    ) -> Result<String, TokenError> {
        if let Some(cached) = self.access.get(audience)
            && cached.expires_at > now() + 30
        {
            return Ok(cached.token.clone());
        }
        let response = refresh(http, &self.issuer, &self.refresh_token, audience).await?;
        self.remember(audience, &response);
        Ok(response.access_token)
    }

    /// Reads a session file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: {e} (run `meshctl login` first)", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Writes the session file, readable by the owner only.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        let temporary = path.with_extension("tmp");
        let _ = std::fs::remove_file(&temporary);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(|e| format!("{}: {e}", temporary.display()))?;
        file.write_all(text.as_bytes())
            .map_err(|e| format!("{}: {e}", temporary.display()))?;
        // Replace in one step, so a crash never leaves half a session behind.
        std::fs::rename(&temporary, path).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// The default session file: `$HOME/.config/meshctl/session.json`.
pub fn default_session_path() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".config/meshctl/session.json")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
