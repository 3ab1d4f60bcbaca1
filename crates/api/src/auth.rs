//! Admin API keys: `Authorization: Bearer mbk_<id>_<secret>`.
//!
//! The id is public and finds the stored key; only a SHA-256 hash of the secret is stored, and
//! it is compared in constant time. The secrets are 256 random bits, so a fast hash is enough
//! (no password-style stretching is needed against guessing).

use crate::{ApiError, AppState};
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use sha2::{Digest, Sha256};
use store::{ApiKeyRecord, CampaignStore};
use subtle::ConstantTimeEq;

const PREFIX: &str = "mbk_";

/// A freshly created key: the record to store and the full key, shown to its owner once.
pub struct NewApiKey {
    pub record: ApiKeyRecord,
    pub key: String,
}

/// Why a key could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The operating system's random source failed.
    #[error("no randomness available: {0}")]
    Random(String),
    /// The key could not be stored.
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

/// Creates, stores and returns a new key named `name`.
pub async fn create_api_key(store: &dyn CampaignStore, name: &str) -> Result<NewApiKey, KeyError> {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    getrandom::fill(&mut id).map_err(|err| KeyError::Random(err.to_string()))?;
    getrandom::fill(&mut secret).map_err(|err| KeyError::Random(err.to_string()))?;
    let id = hex::encode(id);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    let record = ApiKeyRecord {
        id: id.clone(),
        name: name.to_string(),
        secret_hash: hash(&secret),
        created_at: store::db_types::DbTime::now().0,
        revoked_at: None,
    };
    store.insert_api_key(&record).await?;
    Ok(NewApiKey {
        record,
        key: format!("{PREFIX}{id}_{secret}"),
    })
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Middleware for the admin routes: 401 without a valid key, 403 for a revoked one.
pub(crate) async fn require_api_key(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| ApiError::Unauthorized("this route needs an API key: send `Authorization: Bearer <key>` (create one with `marketing api-key create`)".into()))?;
    let unknown = || ApiError::Unauthorized("the API key is not valid".into());
    let (id, secret) = presented
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.split_once('_'))
        .ok_or_else(unknown)?;
    let record = state.store.api_key(id).await?.ok_or_else(unknown)?;
    let matches: bool = hash(secret)
        .as_bytes()
        .ct_eq(record.secret_hash.as_bytes())
        .into();
    if !matches {
        return Err(unknown());
    }
    if record.revoked_at.is_some() {
        return Err(ApiError::Forbidden(format!(
            "API key {id} has been revoked"
        )));
    }
    // Handlers that keep per-caller state (Idempotency-Key) need to know who is calling.
    request
        .extensions_mut()
        .insert(crate::idempotency::CallerKey(record.id));
    Ok(next.run(request).await)
}
