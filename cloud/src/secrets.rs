//! Secrets at rest (AWS secret access keys): AES-256-GCM under a master key,
//! bound to their tenant and id so a ciphertext cannot be moved to another
//! row. Several master keys may be configured for rotation: the first
//! encrypts, any decrypts, and `reencrypt_all` moves every secret to the first.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand::RngCore;
use sqlx::PgPool;
use uuid::Uuid;

/// A secret string that never prints itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

#[derive(Clone)]
pub struct Keyring {
    /// (key id, key); the first encrypts.
    keys: Vec<(String, [u8; 32])>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<_> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("Keyring").field("key_ids", &ids).finish()
    }
}

impl Keyring {
    /// Parses `id:base64key[,id:base64key…]` (32-byte keys).
    pub fn parse(spec: &str) -> anyhow::Result<Self> {
        let mut keys = Vec::new();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (id, key) = entry
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("master keys are written id:base64key"))?;
            let bytes = STANDARD
                .decode(key)
                .map_err(|_| anyhow::anyhow!("master key {id} is not base64"))?;
            let key: [u8; 32] = bytes
                .try_into()
                .map_err(|_| anyhow::anyhow!("master key {id} must be 32 bytes"))?;
            keys.push((id.to_string(), key));
        }
        anyhow::ensure!(!keys.is_empty(), "no master key given");
        Ok(Self { keys })
    }

    /// A fresh random key, for tests and first runs.
    pub fn generate(id: &str) -> Self {
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        Self {
            keys: vec![(id.to_string(), key)],
        }
    }

    /// The spec string of this keyring (to persist a generated key).
    pub fn to_spec(&self) -> String {
        self.keys
            .iter()
            .map(|(id, key)| format!("{id}:{}", STANDARD.encode(key)))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn aad(tenant: Uuid, secret_id: Uuid) -> Vec<u8> {
        [
            tenant.as_bytes().as_slice(),
            secret_id.as_bytes().as_slice(),
        ]
        .concat()
    }

    fn encrypt(&self, tenant: Uuid, secret_id: Uuid, plain: &Secret) -> (String, Vec<u8>, Vec<u8>) {
        let (key_id, key) = &self.keys[0];
        let cipher = Aes256Gcm::new(key.into());
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        let aad = Self::aad(tenant, secret_id);
        let ciphertext = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain.expose().as_bytes(),
                    aad: &aad,
                },
            )
            .expect("AES-GCM encryption of a short secret cannot fail");
        (key_id.clone(), nonce.to_vec(), ciphertext)
    }

    fn decrypt(
        &self,
        tenant: Uuid,
        secret_id: Uuid,
        key_id: &str,
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> anyhow::Result<Secret> {
        let (_, key) = self
            .keys
            .iter()
            .find(|(id, _)| id == key_id)
            .ok_or_else(|| anyhow::anyhow!("master key {key_id} is not configured"))?;
        let aad = Self::aad(tenant, secret_id);
        let plain = Aes256Gcm::new(key.into())
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| anyhow::anyhow!("secret {secret_id} does not decrypt"))?;
        Ok(Secret(String::from_utf8(plain)?))
    }
}

pub async fn store(
    pool: &PgPool,
    keyring: &Keyring,
    tenant: Uuid,
    plain: &Secret,
) -> anyhow::Result<Uuid> {
    let id = Uuid::new_v4();
    let (key_id, nonce, ciphertext) = keyring.encrypt(tenant, id, plain);
    sqlx::query(
        "INSERT INTO secrets (tenant_id, secret_id, key_id, nonce, ciphertext) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(tenant)
    .bind(id)
    .bind(key_id)
    .bind(nonce)
    .bind(ciphertext)
    .execute(pool)
    .await?;
    Ok(id)
}

pub async fn load(
    pool: &PgPool,
    keyring: &Keyring,
    tenant: Uuid,
    id: Uuid,
) -> anyhow::Result<Secret> {
    let (key_id, nonce, ciphertext): (String, Vec<u8>, Vec<u8>) = sqlx::query_as(
        "SELECT key_id, nonce, ciphertext FROM secrets WHERE tenant_id = $1 AND secret_id = $2",
    )
    .bind(tenant)
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| anyhow::anyhow!("secret {id} is missing"))?;
    keyring.decrypt(tenant, id, &key_id, &nonce, &ciphertext)
}

pub async fn delete(pool: &PgPool, tenant: Uuid, id: Uuid) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM secrets WHERE tenant_id = $1 AND secret_id = $2")
        .bind(tenant)
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// A stored secret: tenant, id, master key id, nonce, ciphertext.
#[derive(sqlx::FromRow)]
struct StoredSecret {
    tenant_id: Uuid,
    secret_id: Uuid,
    key_id: String,
    nonce: Vec<u8>,
    ciphertext: Vec<u8>,
}

/// Re-encrypts every secret not yet under the first master key. Returns how
/// many were rewritten.
pub async fn reencrypt_all(pool: &PgPool, keyring: &Keyring) -> anyhow::Result<u64> {
    let current = &keyring.keys[0].0;
    let rows: Vec<StoredSecret> = sqlx::query_as(
        "SELECT tenant_id, secret_id, key_id, nonce, ciphertext FROM secrets WHERE key_id <> $1",
    )
    .bind(current)
    .fetch_all(pool)
    .await?;
    let mut done = 0;
    for row in rows {
        let (tenant, id) = (row.tenant_id, row.secret_id);
        let plain = keyring.decrypt(tenant, id, &row.key_id, &row.nonce, &row.ciphertext)?;
        let (key_id, nonce, ciphertext) = keyring.encrypt(tenant, id, &plain);
        sqlx::query(
            "UPDATE secrets SET key_id = $3, nonce = $4, ciphertext = $5 WHERE tenant_id = $1 AND secret_id = $2",
        )
        .bind(tenant)
        .bind(id)
        .bind(key_id)
        .bind(nonce)
        .bind(ciphertext)
        .execute(pool)
        .await?;
        done += 1;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ciphertexts_are_bound_to_their_row_and_key() {
        let ring = Keyring::generate("k1");
        let (tenant, id) = (Uuid::new_v4(), Uuid::new_v4());
        let (key_id, nonce, ct) = ring.encrypt(tenant, id, &Secret::new("wJalrXUtnFEMI/K7MDENG"));
        assert_eq!(
            ring.decrypt(tenant, id, &key_id, &nonce, &ct)
                .unwrap()
                .expose(),
            "wJalrXUtnFEMI/K7MDENG"
        );
        assert!(ring
            .decrypt(tenant, Uuid::new_v4(), &key_id, &nonce, &ct)
            .is_err());
        assert!(ring
            .decrypt(Uuid::new_v4(), id, &key_id, &nonce, &ct)
            .is_err());
        assert!(Keyring::generate("k1")
            .decrypt(tenant, id, &key_id, &nonce, &ct)
            .is_err());
    }

    #[test]
    fn a_rotated_keyring_still_reads_old_secrets() {
        let old = Keyring::generate("k1");
        let rotated = Keyring::parse(&format!(
            "{},{}",
            Keyring::generate("k2").to_spec(),
            old.to_spec()
        ))
        .unwrap();
        let (tenant, id) = (Uuid::new_v4(), Uuid::new_v4());
        let (key_id, nonce, ct) = old.encrypt(tenant, id, &Secret::new("s3cret"));
        assert_eq!(
            rotated
                .decrypt(tenant, id, &key_id, &nonce, &ct)
                .unwrap()
                .expose(),
            "s3cret"
        );
        assert_eq!(rotated.encrypt(tenant, id, &Secret::new("x")).0, "k2");
        assert_eq!(format!("{:?}", Secret::new("s3cret")), "Secret(…)");
    }
}
