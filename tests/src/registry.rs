//! A real container registry on loopback: Debian's `docker-registry` (Distribution 2.8).
//!
//! [`Registry::start`] writes a `config.yml` into a temp dir, runs
//! `/usr/bin/docker-registry serve config.yml` on `127.0.0.1:<free port>`, and waits until
//! `GET /v2/` answers. Dropping the [`Registry`] kills and reaps the process, stops the token
//! server (if any) and removes the temp dir with the registry's storage.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

/// The registry binary from Debian's `docker-registry` package.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
/// The `service` the token-auth registry expects in tokens (`aud` claim).
pub const TOKEN_SERVICE: &str = "apex-e2e-registry";
/// The `issuer` the token-auth registry expects in tokens (`iss` claim).
pub const TOKEN_ISSUER: &str = "apex-e2e-token-issuer";

const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// How clients must authenticate to a [`Registry`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryAuth {
    /// Anonymous pull and push.
    None,
    /// HTTP basic auth against a bcrypt htpasswd file with this one user.
    Basic {
        /// The user name.
        user: String,
        /// The password.
        pass: String,
    },
    /// Bearer tokens (Docker token auth) from an in-process token server that accepts
    /// this one user via HTTP basic auth; anonymous token requests get 401.
    Token {
        /// The user name.
        user: String,
        /// The password.
        pass: String,
    },
}

impl RegistryAuth {
    /// Basic auth with the given user and password.
    pub fn basic(user: &str, pass: &str) -> Self {
        RegistryAuth::Basic {
            user: user.into(),
            pass: pass.into(),
        }
    }

    /// Token auth with the given user and password.
    pub fn token(user: &str, pass: &str) -> Self {
        RegistryAuth::Token {
            user: user.into(),
            pass: pass.into(),
        }
    }
}

/// A running `docker-registry`; stopped and cleaned up on drop.
pub struct Registry {
    child: Child,
    host: String,
    storage: PathBuf,
    log_path: PathBuf,
    token: Option<TokenServer>,
    creds: Option<(String, String)>,
    // Dropped last (after `Drop::drop` killed the process): removes storage, config, log.
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry with the given auth on `127.0.0.1:<free port>` and waits until it
    /// answers `GET /v2/` (about 5 s at most; the error then carries the registry's log).
    pub fn start(auth: RegistryAuth) -> Result<Registry> {
        if !Path::new(REGISTRY_BIN).exists() {
            bail!("{REGISTRY_BIN} not found: apt-get install docker-registry");
        }
        let dir = tempfile::Builder::new()
            .prefix("apex-registry-")
            .tempdir()?;
        let storage = dir.path().join("storage");
        fs::create_dir(&storage)?;
        let (auth_yaml, token, creds) = match auth {
            RegistryAuth::None => (String::new(), None, None),
            RegistryAuth::Basic { user, pass } => {
                let htpasswd = dir.path().join("htpasswd");
                fs::write(&htpasswd, htpasswd_line(&user, &pass)?)?;
                let yaml = format!(
                    "auth:\n  htpasswd:\n    realm: apex-e2e\n    path: {}\n",
                    yaml_str(&htpasswd)
                );
                (yaml, None, Some((user, pass)))
            }
            RegistryAuth::Token { user, pass } => {
                let server = TokenServer::start(&user, &pass)?;
                let bundle = dir.path().join("token-root.pem");
                fs::write(&bundle, &server.cert_pem)?;
                let yaml = format!(
                    "auth:\n  token:\n    realm: {}\n    service: {TOKEN_SERVICE}\n    \
                     issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                    serde_json::to_string(&server.realm)?,
                    yaml_str(&bundle)
                );
                (yaml, Some(server), Some((user, pass)))
            }
        };

        let log_path = dir.path().join("registry.log");
        let config = dir.path().join("config.yml");
        let mut attempt = 0;
        let (child, host) = loop {
            attempt += 1;
            let host = format!("127.0.0.1:{}", free_port()?);
            fs::write(&config, config_yaml(&storage, &host, &auth_yaml))?;
            let log = fs::File::create(&log_path)?;
            let mut cmd = Command::new(REGISTRY_BIN);
            cmd.arg("serve")
                .arg(&config)
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            // SAFETY: the closure only makes one async-signal-safe syscall (prctl).
            unsafe {
                cmd.pre_exec(|| {
                    // Dies with the test (thread) that started it, even on SIGKILL, so an
                    // interrupted run leaves no registry behind.
                    rustix::process::set_parent_process_death_signal(Some(
                        rustix::process::Signal::KILL,
                    ))
                    .map_err(std::io::Error::from)
                });
            }
            let mut child = cmd
                .spawn()
                .with_context(|| format!("spawning {REGISTRY_BIN}"))?;
            match wait_ready(&mut child, &host, &log_path) {
                Ok(()) => break (child, host),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    // Someone took the port between our probe and the registry's bind: retry.
                    let log = fs::read_to_string(&log_path).unwrap_or_default();
                    if attempt < 3 && log.contains("address already in use") {
                        continue;
                    }
                    return Err(e);
                }
            }
        };
        Ok(Registry {
            child,
            host,
            storage,
            log_path,
            token,
            creds,
            _dir: dir,
        })
    }

    /// `127.0.0.1:PORT`, for references like `HOST/repo:tag`.
    pub fn host(&self) -> String {
        self.host.clone()
    }

    /// The registry's filesystem storage root (`docker/registry/v2/...` below it).
    pub fn storage_dir(&self) -> &Path {
        &self.storage
    }

    /// The credentials this registry accepts (`None` for an anonymous registry).
    pub fn creds(&self) -> Option<(&str, &str)> {
        self.creds.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The token endpoint (`http://127.0.0.1:PORT/token`) for a token-auth registry.
    pub fn token_realm(&self) -> Option<&str> {
        self.token.as_ref().map(|t| t.realm.as_str())
    }

    /// The path in storage where a blob's content lives (exists once it was pushed).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        let prefix = hex.get(..2).unwrap_or(hex);
        self.storage.join(format!(
            "docker/registry/v2/blobs/sha256/{prefix}/{hex}/data"
        ))
    }

    /// The registry's combined stdout and stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The registry process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `GET /v2/` until the registry answers (200 or 401), it exits, or time runs out.
fn wait_ready(child: &mut Child, host: &str, log_path: &Path) -> Result<()> {
    let log = || fs::read_to_string(log_path).unwrap_or_default();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("docker-registry exited early ({status}); log:\n{}", log());
        }
        if let Ok(resp) = http_get(host, "/v2/", None) {
            if resp.status == 200 || resp.status == 401 {
                return Ok(());
            }
        }
        if start.elapsed() > READY_TIMEOUT {
            bail!(
                "docker-registry on {host} not ready after {READY_TIMEOUT:?}; log:\n{}",
                log()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
        if let Some(mut t) = self.token.take() {
            t.stop();
        }
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("host", &self.host)
            .field("pid", &self.child.id())
            .field("storage", &self.storage)
            .field("token_realm", &self.token_realm())
            .finish()
    }
}

fn config_yaml(storage: &Path, host: &str, auth: &str) -> String {
    format!(
        "version: 0.1\n\
         log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  \
         maintenance:\n    uploadpurging:\n      enabled: false\n\
         http:\n  addr: {host}\n  secret: apex-e2e-not-a-secret\n\
         health:\n  storagedriver:\n    enabled: false\n\
         {auth}",
        yaml_str(storage)
    )
}

/// A path as a double-quoted YAML scalar (JSON strings are valid YAML).
fn yaml_str(p: &Path) -> String {
    serde_json::to_string(&p.to_string_lossy()).expect("string serializes")
}

fn htpasswd_line(user: &str, pass: &str) -> Result<String> {
    let out = Command::new("htpasswd")
        .args(["-Bbn", user, pass])
        .output()
        .context("running htpasswd (apt-get install apache2-utils)")?;
    if !out.status.success() {
        bail!("htpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string() + "\n")
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A minimal HTTP response, as read by [`http_get`].
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// The raw header block (status line excluded), CRLF-separated.
    pub headers: String,
    /// The body, lossily decoded as UTF-8.
    pub body: String,
}

impl HttpResponse {
    /// The first header with this name (case-insensitive), if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// A plain-HTTP/1.0 `GET http://HOST{path}`, optionally with basic credentials.
/// Handy for poking a [`Registry`] or its token server without an HTTP client crate.
pub fn http_get(host: &str, path: &str, basic: Option<(&str, &str)>) -> Result<HttpResponse> {
    let mut stream = TcpStream::connect(host)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n");
    if let Some((u, p)) = basic {
        req += &format!(
            "Authorization: Basic {}\r\n",
            STANDARD.encode(format!("{u}:{p}"))
        );
    }
    req += "\r\n";
    stream.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let (status_line, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad HTTP status line {status_line:?}"))?;
    Ok(HttpResponse {
        status,
        headers: headers.to_string(),
        body: body.to_string(),
    })
}

/// The in-process Docker token server (`GET /token?service=..&scope=..`).
struct TokenServer {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    realm: String,
    cert_pem: String,
}

struct Issuer {
    user: String,
    pass: String,
    key: EcdsaKeyPair,
    x5c: String,
    rng: SystemRandom,
}

impl TokenServer {
    fn start(user: &str, pass: &str) -> Result<TokenServer> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = rcgen::CertificateParams::new(vec!["apex-e2e-token".to_string()])?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "apex-e2e token signer");
        // Distribution requires the leaf to allow digital signatures.
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key)?;
        let rng = SystemRandom::new();
        let signing =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key.serialize_der(), &rng)
                .map_err(|e| anyhow!("loading the token signing key: {e}"))?;
        let issuer = Issuer {
            user: user.to_string(),
            pass: pass.to_string(),
            key: signing,
            x5c: STANDARD.encode(cert.der()),
            rng,
        };

        let server = Arc::new(
            tiny_http::Server::http("127.0.0.1:0").map_err(|e| anyhow!("token server: {e}"))?,
        );
        let port = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| anyhow!("token server has no IP address"))?
            .port();
        let srv = Arc::clone(&server);
        let thread = thread::Builder::new()
            .name("apex-e2e-token".into())
            .spawn(move || {
                for req in srv.incoming_requests() {
                    issuer.handle(req);
                }
            })?;
        Ok(TokenServer {
            server,
            thread: Some(thread),
            realm: format!("http://127.0.0.1:{port}/token"),
            cert_pem: cert.pem(),
        })
    }

    fn stop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Issuer {
    fn handle(&self, req: tiny_http::Request) {
        let (status, body, challenge) = self.answer(&req);
        let mut resp = tiny_http::Response::from_string(body).with_status_code(status);
        if let Ok(h) = tiny_http::Header::from_bytes("Content-Type", "application/json") {
            resp.add_header(h);
        }
        if challenge {
            if let Ok(h) =
                tiny_http::Header::from_bytes("WWW-Authenticate", "Basic realm=\"apex-e2e-token\"")
            {
                resp.add_header(h);
            }
        }
        let _ = req.respond(resp);
    }

    /// (status, JSON body, send a basic-auth challenge)
    fn answer(&self, req: &tiny_http::Request) -> (u16, String, bool) {
        let (path, query) = req.url().split_once('?').unwrap_or((req.url(), ""));
        if path != "/token" || *req.method() != tiny_http::Method::Get {
            return (404, err_body("NOT_FOUND", "no such endpoint"), false);
        }
        let authorized = req
            .headers()
            .iter()
            .find(|h| h.field.equiv("Authorization"))
            .and_then(|h| basic_creds(h.value.as_str()))
            .is_some_and(|(u, p)| u == self.user && p == self.pass);
        if !authorized {
            return (
                401,
                err_body("UNAUTHORIZED", "bad or missing credentials"),
                true,
            );
        }
        let mut service = None;
        let mut access = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match k {
                "service" => service = Some(v),
                "scope" => {
                    for scope in v.split(' ') {
                        if let Some(a) = parse_scope(scope) {
                            access.push(a);
                        }
                    }
                }
                _ => {}
            }
        }
        if service.as_deref().is_some_and(|s| s != TOKEN_SERVICE) {
            return (400, err_body("INVALID_SERVICE", "unknown service"), false);
        }
        match self.token(&access) {
            Ok(jwt) => {
                let body = json!({"token": jwt, "access_token": jwt, "expires_in": 300});
                (200, body.to_string(), false)
            }
            Err(e) => (500, err_body("INTERNAL", &e.to_string()), false),
        }
    }

    fn token(&self, access: &[Value]) -> Result<String> {
        let now = unix_now();
        let mut jti = [0u8; 16];
        self.rng.fill(&mut jti).map_err(|_| anyhow!("rng failed"))?;
        let claims = json!({
            "iss": TOKEN_ISSUER,
            "sub": self.user,
            "aud": TOKEN_SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": hex::encode(jti),
            "access": access,
        });
        let header = json!({"typ": "JWT", "alg": "ES256", "x5c": [self.x5c]});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims)?)
        );
        let sig = self
            .key
            .sign(&self.rng, input.as_bytes())
            .map_err(|_| anyhow!("signing the token failed"))?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref())))
    }
}

fn err_body(code: &str, msg: &str) -> String {
    json!({"errors": [{"code": code, "message": msg}]}).to_string()
}

/// `repository:NAME:pull,push` → `{"type","name","actions"}` (the name may contain ':').
fn parse_scope(scope: &str) -> Option<Value> {
    let (typ, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    let actions: Vec<&str> = actions.split(',').filter(|a| !a.is_empty()).collect();
    Some(json!({"type": typ, "name": name, "actions": actions}))
}

fn basic_creds(value: &str) -> Option<(String, String)> {
    let (scheme, b64) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(b64.trim()).ok()?).ok()?;
    let (u, p) = decoded.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_and_decoding() {
        assert_eq!(
            percent_decode("repository%3Afoo%2Fbar%3Apull%2Cpush"),
            "repository:foo/bar:pull,push"
        );
        let a = parse_scope("repository:foo/bar:pull,push").unwrap();
        assert_eq!(a["name"], "foo/bar");
        assert_eq!(a["actions"], json!(["pull", "push"]));
        let creds = basic_creds(&format!("Basic {}", STANDARD.encode("u:p:q"))).unwrap();
        assert_eq!(creds, ("u".to_string(), "p:q".to_string()));
    }
}
