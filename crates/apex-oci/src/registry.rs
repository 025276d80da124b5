//! Talking to registries over the OCI distribution API.
//!
//! oci-client does the protocol work (token and basic auth challenges, chunked
//! uploads); this module adds scheme selection, resumable verified downloads into
//! the content store, and maps failures onto [`ImageError`]s users can act on.

use std::io::{Read, Write};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures_util::StreamExt;
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};

use crate::auth::Credentials;
use crate::content::{ContentStore, Ingest};
use crate::digest::Digest;
use crate::error::ImageError;
use crate::manifest::ACCEPTED;
use crate::reference::{is_loopback_host, ImageRef};

/// How to reach a registry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Scheme {
    /// HTTPS; plain HTTP only for loopback or configured insecure registries that
    /// do not speak TLS (docker's behaviour).
    #[default]
    Auto,
    /// Always HTTP.
    Http,
    /// Always HTTPS.
    Https,
}

impl FromStr for Scheme {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Scheme::Auto),
            "http" => Ok(Scheme::Http),
            "https" => Ok(Scheme::Https),
            _ => Err(format!("invalid scheme {s:?}: use http, https or auto")),
        }
    }
}

/// Connection settings shared by pull, push and login.
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    /// Scheme selection.
    pub scheme: Scheme,
    /// Registries (host[:port]) allowed to fall back to plain HTTP.
    pub insecure_registries: Vec<String>,
}

/// A client bound to one registry with its credentials.
pub struct RegistryClient {
    client: Client,
    auth: RegistryAuth,
    host: String,
    scheme: &'static str,
}

fn http_probe_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("static reqwest config")
}

/// Picks http or https for `host`.
async fn pick_scheme(host: &str, opts: &ConnectOptions) -> Result<&'static str, ImageError> {
    let insecure_ok = is_loopback_host(host) || opts.insecure_registries.iter().any(|r| r == host);
    match opts.scheme {
        Scheme::Http => Ok("http"),
        Scheme::Https => Ok("https"),
        Scheme::Auto if !insecure_ok => Ok("https"),
        Scheme::Auto => {
            let c = http_probe_client();
            if c.get(format!("https://{host}/v2/")).send().await.is_ok() {
                return Ok("https");
            }
            match c.get(format!("http://{host}/v2/")).send().await {
                Ok(_) => Ok("http"),
                Err(e) => Err(ImageError::Unreachable {
                    registry: host.to_string(),
                    reason: reqwest_reason(&e),
                }),
            }
        }
    }
}

/// The most specific cause of a transport error ("Connection refused", a TLS failure),
/// without reqwest's layers of wrapping.
fn reqwest_reason(e: &reqwest::Error) -> String {
    let mut last: &dyn std::error::Error = e;
    while let Some(inner) = last.source() {
        last = inner;
    }
    if e.is_timeout() {
        format!("timed out ({last})")
    } else {
        last.to_string()
    }
}

/// Maps an oci-client error onto a user-facing one.
pub fn classify(e: OciDistributionError, host: &str, what: &str) -> anyhow::Error {
    use OciDistributionError as E;
    let img = match &e {
        E::RequestError(re) if re.is_connect() || re.is_timeout() => ImageError::Unreachable {
            registry: host.to_string(),
            reason: reqwest_reason(re),
        },
        E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => {
            ImageError::Unauthorized(host.to_string())
        }
        E::ImageManifestNotFoundError(_) => ImageError::NotFoundRemote(what.to_string()),
        E::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                        | OciErrorCode::BlobUnknown
                )
            }) {
                ImageError::NotFoundRemote(what.to_string())
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                ImageError::Unauthorized(host.to_string())
            } else {
                return anyhow::anyhow!("registry {host} refused {what}: {envelope}");
            }
        }
        E::ServerError { code: 404, .. } => ImageError::NotFoundRemote(what.to_string()),
        E::ServerError {
            code: 401 | 403, ..
        } => ImageError::Unauthorized(host.to_string()),
        E::DigestError(d) => {
            return anyhow::anyhow!("{what}: {d}");
        }
        _ => return anyhow::anyhow!("registry {host}: {what}: {e}"),
    };
    img.into()
}

impl RegistryClient {
    /// Connects to the registry of `r` (picking the scheme) with optional credentials.
    pub async fn connect(
        r: &ImageRef,
        creds: Option<Credentials>,
        opts: &ConnectOptions,
    ) -> Result<Self> {
        let host = r.oci().resolve_registry().to_string();
        let scheme = pick_scheme(&host, opts).await?;
        let protocol = if scheme == "http" {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        let client = Client::new(ClientConfig {
            protocol,
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(60)),
            ..Default::default()
        });
        let auth = match creds {
            Some(c) => RegistryAuth::Basic(c.username, c.password),
            None => RegistryAuth::Anonymous,
        };
        client.store_auth_if_needed(&host, &auth).await;
        Ok(RegistryClient {
            client,
            auth,
            host,
            scheme,
        })
    }

    /// The host this client talks to.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Verifies credentials: `GET /v2/` with basic auth, or a token request when the
    /// registry uses bearer tokens.
    pub async fn check_login(&self, r: &ImageRef) -> Result<()> {
        let RegistryAuth::Basic(user, pass) = &self.auth else {
            return Ok(());
        };
        let resp = http_probe_client()
            .get(format!("{}://{}/v2/", self.scheme, self.host))
            .basic_auth(user, Some(pass))
            .send()
            .await
            .map_err(|e| ImageError::Unreachable {
                registry: self.host.clone(),
                reason: reqwest_reason(&e),
            })?;
        if resp.status().is_success() {
            return Ok(());
        }
        let bearer = resp
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().starts_with("bearer"));
        if resp.status() == reqwest::StatusCode::UNAUTHORIZED && bearer {
            self.client
                .auth(r.oci(), &self.auth, RegistryOperation::Pull)
                .await
                .map_err(|e| classify(e, &self.host, "login"))?;
            return Ok(());
        }
        Err(ImageError::Unauthorized(self.host.clone()).into())
    }

    /// Fetches a manifest or index (raw bytes), verifying it against a pinned digest.
    pub async fn manifest(&self, r: &ImageRef) -> Result<(Vec<u8>, Digest)> {
        let (raw, _) = self
            .client
            .pull_manifest_raw(r.oci(), &self.auth, ACCEPTED)
            .await
            .map_err(|e| classify(e, &self.host, &r.to_string()))?;
        let actual = Digest::of(&raw);
        if let Some(want) = r.digest() {
            if want != actual {
                return Err(ImageError::DigestMismatch {
                    what: format!("manifest of {r}"),
                    expected: want.to_string(),
                    actual: actual.to_string(),
                }
                .into());
            }
        }
        Ok((raw.to_vec(), actual))
    }

    /// Downloads blob `d` into `ingest`, continuing from its offset when the registry
    /// honours range requests. `progress` gets the running byte count.
    pub async fn fetch_blob(
        &self,
        r: &ImageRef,
        d: &Digest,
        size: u64,
        ingest: &mut Ingest,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<()> {
        let desc = oci_client::manifest::OciDescriptor {
            digest: d.to_string(),
            size: size as i64,
            ..Default::default()
        };
        let what = format!("blob {d}");
        if ingest.offset() > size {
            ingest.reset()?;
        }
        if size > 0 && ingest.offset() == size {
            // Fully downloaded before an interruption, just not committed: a range request
            // would be unsatisfiable. The commit verifies the bytes.
            progress(size);
            return Ok(());
        }
        let mut stream = self
            .client
            .pull_blob_stream_partial(r.oci(), &desc, ingest.offset(), None)
            .await
            .map(|resp| match resp {
                BlobResponse::Full(s) => (s, true),
                BlobResponse::Partial(s) => (s, false),
            })
            .map_err(|e| classify(e, &self.host, &what))?;
        if stream.1 {
            ingest.reset()?;
        }
        progress(ingest.offset());
        while let Some(chunk) = stream.0.next().await {
            let chunk = chunk
                .map_err(|e| ImageError::Unreachable {
                    registry: self.host.clone(),
                    reason: format!("download of {d} interrupted: {e}"),
                })
                .context("the partial download is kept; pull again to resume")?;
            ingest.write_all(&chunk)?;
            progress(ingest.offset());
            if ingest.offset() > size {
                break;
            }
        }
        Ok(())
    }

    /// Uploads a blob from the content store unless the registry already has it.
    /// Returns false when it was already there.
    pub async fn push_blob(&self, r: &ImageRef, store: &ContentStore, d: &Digest) -> Result<bool> {
        let what = format!("blob {d}");
        if self
            .client
            .blob_exists(r.oci(), &d.to_string())
            .await
            .map_err(|e| classify(e, &self.host, &what))?
        {
            return Ok(false);
        }
        let size = store
            .size(d)
            .with_context(|| format!("{what} missing locally"))?;
        let mut file = store.open_blob(d)?;
        // Stream the file in 4 MiB chunks so large layers are never held in memory whole.
        let stream =
            futures_util::stream::unfold((file_reader_buf(), false), move |(mut buf, done)| {
                let res = if done {
                    None
                } else {
                    match file.read(&mut buf) {
                        Ok(0) => None,
                        Ok(n) => Some((Ok(Bytes::copy_from_slice(&buf[..n])), (buf, false))),
                        Err(e) => Some((Err(OciDistributionError::IoError(e)), (buf, true))),
                    }
                };
                std::future::ready(res)
            });
        self.client
            .push_blob_stream(r.oci(), stream, &d.to_string(), Some(size))
            .await
            .map_err(|e| classify(e, &self.host, &what))?;
        Ok(true)
    }

    /// Uploads a manifest under `r`'s tag (or digest).
    pub async fn push_manifest(&self, r: &ImageRef, raw: Vec<u8>, media_type: &str) -> Result<()> {
        let ct = reqwest::header::HeaderValue::from_str(media_type)
            .with_context(|| format!("bad media type {media_type}"))?;
        self.client
            .push_manifest_raw(r.oci(), raw, ct)
            .await
            .map_err(|e| classify(e, &self.host, &format!("manifest {r}")))?;
        Ok(())
    }
}

fn file_reader_buf() -> Vec<u8> {
    vec![0u8; 4 << 20]
}
