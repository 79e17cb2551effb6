//! SASL client exchanges: PLAIN (RFC 4616) and SCRAM-SHA-256/512 (RFC 5802, RFC 7677).
//!
//! Pure: the caller carries the bytes to and from the broker (`SaslAuthenticate`). The
//! SCRAM exchange verifies the server's signature, so a broker that does not know the
//! password cannot pretend the login worked.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{KeyInit, Mac};
use sha2::Digest;

/// A SASL mechanism nerite speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl Mechanism {
    /// The name the broker knows it by.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// One client side of an exchange.
pub enum Exchange {
    Plain { message: Vec<u8> },
    Scram(Box<Scram>),
}

/// SCRAM state between messages.
pub struct Scram {
    hash: Mechanism,
    password: String,
    client_nonce: String,
    first_bare: String,
    step: ScramStep,
    server_signature: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ScramStep {
    SentFirst,
    SentFinal,
    Done,
}

impl Exchange {
    /// Begin a login with a random client nonce.
    pub fn start(mechanism: Mechanism, username: &str, password: &str) -> Exchange {
        let mut raw = [0u8; 18];
        // A failure of the OS random source leaves a fixed nonce; SCRAM stays correct (the
        // server adds its own nonce), only replay resistance is weaker.
        let _ = getrandom::fill(&mut raw);
        Self::start_with_nonce(mechanism, username, password, &B64.encode(raw))
    }

    /// Begin a login with a given client nonce (tests use the RFC's).
    pub fn start_with_nonce(
        mechanism: Mechanism,
        username: &str,
        password: &str,
        nonce: &str,
    ) -> Exchange {
        match mechanism {
            Mechanism::Plain => {
                let mut message = Vec::with_capacity(username.len() + password.len() + 2);
                message.push(0);
                message.extend_from_slice(username.as_bytes());
                message.push(0);
                message.extend_from_slice(password.as_bytes());
                Exchange::Plain { message }
            }
            Mechanism::ScramSha256 | Mechanism::ScramSha512 => {
                let first_bare = format!("n={},r={nonce}", escape_name(username));
                Exchange::Scram(Box::new(Scram {
                    hash: mechanism,
                    password: password.to_string(),
                    client_nonce: nonce.to_string(),
                    first_bare,
                    step: ScramStep::SentFirst,
                    server_signature: Vec::new(),
                }))
            }
        }
    }

    /// The first message to send.
    pub fn first(&self) -> Vec<u8> {
        match self {
            Exchange::Plain { message } => message.clone(),
            Exchange::Scram(s) => format!("n,,{}", s.first_bare).into_bytes(),
        }
    }

    /// Take the server's answer: `Ok(Some(reply))` to send next, `Ok(None)` when the login
    /// is complete, `Err` when the server's answer is wrong or refuses the login.
    pub fn next(&mut self, server: &[u8]) -> Result<Option<Vec<u8>>, String> {
        match self {
            Exchange::Plain { .. } => Ok(None),
            Exchange::Scram(s) => s.next(server),
        }
    }
}

impl Scram {
    fn next(&mut self, server: &[u8]) -> Result<Option<Vec<u8>>, String> {
        let text = std::str::from_utf8(server).map_err(|_| "server message is not UTF-8")?;
        match self.step {
            ScramStep::SentFirst => {
                let attrs = parse(text);
                if let Some(e) = attrs.get("e") {
                    return Err(format!("server refused the login: {e}"));
                }
                let nonce = attrs.get("r").ok_or("server-first message without nonce")?;
                if !nonce.starts_with(&self.client_nonce) || nonce.len() <= self.client_nonce.len()
                {
                    return Err("server nonce does not extend the client nonce".into());
                }
                let salt = B64
                    .decode(attrs.get("s").ok_or("server-first message without salt")?)
                    .map_err(|_| "salt is not base64")?;
                let iterations: u32 = attrs
                    .get("i")
                    .ok_or("server-first message without iteration count")?
                    .parse()
                    .map_err(|_| "iteration count is not a number")?;
                if !(1..=10_000_000).contains(&iterations) {
                    return Err(format!("iteration count {iterations} out of range"));
                }
                let salted = hi(self.hash, self.password.as_bytes(), &salt, iterations);
                let client_key = hmac(self.hash, &salted, b"Client Key");
                let stored_key = digest(self.hash, &client_key);
                let without_proof = format!("c=biws,r={nonce}");
                let auth_message = format!("{},{text},{without_proof}", self.first_bare);
                let signature = hmac(self.hash, &stored_key, auth_message.as_bytes());
                let proof: Vec<u8> = client_key
                    .iter()
                    .zip(signature.iter())
                    .map(|(a, b)| a ^ b)
                    .collect();
                let server_key = hmac(self.hash, &salted, b"Server Key");
                self.server_signature = hmac(self.hash, &server_key, auth_message.as_bytes());
                self.step = ScramStep::SentFinal;
                Ok(Some(
                    format!("{without_proof},p={}", B64.encode(proof)).into_bytes(),
                ))
            }
            ScramStep::SentFinal => {
                let attrs = parse(text);
                if let Some(e) = attrs.get("e") {
                    return Err(format!("server refused the login: {e}"));
                }
                let v = B64
                    .decode(
                        attrs
                            .get("v")
                            .ok_or("server-final message without signature")?,
                    )
                    .map_err(|_| "server signature is not base64")?;
                if v != self.server_signature {
                    return Err("server signature does not match (not the expected server)".into());
                }
                self.step = ScramStep::Done;
                Ok(None)
            }
            ScramStep::Done => Ok(None),
        }
    }
}

/// `a=1,b=2` → map (values may contain `=`).
fn parse(text: &str) -> std::collections::HashMap<&str, &str> {
    text.split(',')
        .filter_map(|kv| kv.split_once('='))
        .collect()
}

/// RFC 5802 saslname: `=` → `=3D`, `,` → `=2C`.
fn escape_name(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

fn hmac(m: Mechanism, key: &[u8], data: &[u8]) -> Vec<u8> {
    match m {
        Mechanism::ScramSha512 => {
            let mut mac = <hmac::Hmac<sha2::Sha512> as KeyInit>::new_from_slice(key)
                .unwrap_or_else(
                    |_| <hmac::Hmac<sha2::Sha512> as KeyInit>::new(&Default::default()),
                );
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        _ => {
            let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key)
                .unwrap_or_else(
                    |_| <hmac::Hmac<sha2::Sha256> as KeyInit>::new(&Default::default()),
                );
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
    }
}

fn digest(m: Mechanism, data: &[u8]) -> Vec<u8> {
    match m {
        Mechanism::ScramSha512 => sha2::Sha512::digest(data).to_vec(),
        _ => sha2::Sha256::digest(data).to_vec(),
    }
}

/// PBKDF2 with HMAC (RFC 5802's `Hi`), one output block.
fn hi(m: Mechanism, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut first = salt.to_vec();
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(m, password, &first);
    let mut out = u.clone();
    for _ in 1..iterations {
        u = hmac(m, password, &u);
        for (o, x) in out.iter_mut().zip(u.iter()) {
            *o ^= x;
        }
    }
    out
}

/// A broker's message with the password removed, should it ever echo it.
pub fn scrub(text: &str, password: &str) -> String {
    if !password.is_empty() && text.contains(password) {
        "details withheld because they may contain a credential".to_string()
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_message_is_nul_separated() {
        let e = Exchange::start(Mechanism::Plain, "alice", "s3cret");
        assert_eq!(e.first(), b"\0alice\0s3cret".to_vec());
    }

    /// RFC 7677 section 3: SCRAM-SHA-256 with user "user", password "pencil".
    #[test]
    fn scram_sha256_matches_rfc7677() {
        let mut e = Exchange::start_with_nonce(
            Mechanism::ScramSha256,
            "user",
            "pencil",
            "rOprNGfwEbeRWgbNEkqO",
        );
        assert_eq!(e.first(), b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO".to_vec());
        let server_first =
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let reply = e
            .next(server_first)
            .expect("valid server-first")
            .expect("a reply");
        assert_eq!(
            String::from_utf8(reply).expect("utf-8"),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        assert_eq!(
            e.next(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
            Ok(None)
        );
    }

    #[test]
    fn scram_rejects_a_forged_server_signature_and_errors() {
        let mut e = Exchange::start_with_nonce(
            Mechanism::ScramSha256,
            "user",
            "pencil",
            "rOprNGfwEbeRWgbNEkqO",
        );
        let server_first =
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        e.next(server_first).expect("valid server-first");
        assert!(e.next(b"v=AAAA").is_err());

        let mut e = Exchange::start_with_nonce(Mechanism::ScramSha512, "u", "p", "abc");
        assert!(e.next(b"e=invalid-proof").is_err());
        let mut e = Exchange::start_with_nonce(Mechanism::ScramSha512, "u", "p", "abc");
        assert!(
            e.next(b"r=xyz,s=AAAA,i=4096").is_err(),
            "nonce must extend ours"
        );
    }

    #[test]
    fn scram_sha512_round_trip_against_a_reference_server() {
        // A server computed with the same primitives (RFC 5802 formulas).
        let (user, password, salt, i) = ("nerite", "pa,ss=word", b"saltsalt".as_slice(), 4096);
        let mut e = Exchange::start_with_nonce(Mechanism::ScramSha512, user, password, "cn");
        let first = String::from_utf8(e.first()).expect("utf-8");
        assert_eq!(first, "n,,n=nerite,r=cn");
        let server_first = format!("r=cnSERVER,s={},i={i}", B64.encode(salt));
        let reply = e
            .next(server_first.as_bytes())
            .expect("server-first")
            .expect("reply");
        let reply = String::from_utf8(reply).expect("utf-8");
        let (without_proof, proof) = reply.rsplit_once(",p=").expect("proof");
        let m = Mechanism::ScramSha512;
        let salted = hi(m, password.as_bytes(), salt, i);
        let auth = format!("n=nerite,r=cn,{server_first},{without_proof}");
        let client_key = hmac(m, &salted, b"Client Key");
        let sig = hmac(m, &digest(m, &client_key), auth.as_bytes());
        let expect: Vec<u8> = client_key.iter().zip(sig).map(|(a, b)| a ^ b).collect();
        assert_eq!(B64.decode(proof).expect("b64"), expect);
        let server_sig = hmac(m, &hmac(m, &salted, b"Server Key"), auth.as_bytes());
        assert_eq!(
            e.next(format!("v={}", B64.encode(server_sig)).as_bytes()),
            Ok(None)
        );
    }

    #[test]
    fn names_are_escaped() {
        assert_eq!(escape_name("a=b,c"), "a=3Db=2Cc");
    }

    #[test]
    fn scrub_hides_a_password() {
        assert!(!scrub("bad password hunter2", "hunter2").contains("hunter2"));
        assert_eq!(scrub("bad login", "hunter2"), "bad login");
    }
}
