//! An upstream: one OpenAI-compatible provider a job can be sent to — its base URL,
//! keys, extra headers, and lanes laid out the way it limits (SPEC §5, §6). One engine
//! serves several: a job names its upstream by index.

use std::sync::Arc;

use crate::limits::lanes::{LaneLayout, LanePool};
use bytes::Bytes;

use crate::provider::transport::{ApiKey, Reply, Transport, TransportError};

/// How to reach one provider.
#[derive(Debug, Clone)]
pub struct UpstreamSpec {
    /// How its lanes are named in events when the engine has several: `NAME:key#1`.
    /// The first upstream's lanes carry no prefix.
    pub name: String,
    pub base_url: String,
    pub keys: Vec<ApiKey>,
    /// Sent with every request (never `Authorization`: that is the key's).
    pub headers: http::HeaderMap,
    /// How its limits are shared; [`LaneLayout::for_base_url`] knows the usual ones.
    pub lanes: LaneLayout,
    /// Per-lane ceilings given by flag or configuration.
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
}

impl UpstreamSpec {
    /// A provider at `base_url` with `keys`, laid out as volley knows it to limit.
    pub fn new(base_url: &str, keys: Vec<ApiKey>) -> UpstreamSpec {
        UpstreamSpec {
            name: String::new(),
            base_url: base_url.to_string(),
            keys,
            headers: http::HeaderMap::new(),
            lanes: LaneLayout::for_base_url(base_url),
            rpm: None,
            tpm: None,
        }
    }
}

/// A provider ready to send to: its transport and its lanes.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: Arc<str>,
    pub transport: Transport,
    pub lanes: Arc<LanePool>,
    /// The extra headers' values, each redacted from replies like a key (a provider
    /// that echoes an `api-key` header in its 401 must not put it in ERRORS).
    secrets: Arc<Vec<(ApiKey, Arc<str>)>>,
}

impl Upstream {
    /// `max_connections` sizes the transport's idle pool.
    pub fn new(spec: UpstreamSpec, max_connections: usize) -> Result<Upstream, TransportError> {
        let secrets = spec
            .headers
            .iter()
            .filter_map(|(name, value)| {
                let value = value.to_str().ok()?.to_string();
                Some((ApiKey::new(value)?, Arc::from(format!("header:{name}"))))
            })
            .collect();
        let transport = Transport::new(&spec.base_url, max_connections)?.with_headers(spec.headers);
        let prefix = match spec.name.as_str() {
            "" => String::new(),
            name => format!("{name}:"),
        };
        let lanes = LanePool::with_layout(&prefix, spec.keys, spec.lanes, spec.rpm, spec.tpm);
        Ok(Upstream {
            name: Arc::from(spec.name),
            transport,
            lanes,
            secrets: Arc::new(secrets),
        })
    }

    /// Every secret of the upstream (its keys, its extra headers' values) with the
    /// label it is replaced by.
    fn secrets(&self) -> impl Iterator<Item = (&ApiKey, &str)> {
        let keys = self.lanes.keys().iter().map(|k| (&k.key, &*k.label));
        keys.chain(self.secrets.iter().map(|(k, l)| (k, &**l)))
    }

    /// A redactor for a streamed body: each chunk is cleaned as it passes, and the few
    /// bytes at its end that could begin a secret are held back until the next chunk
    /// (or the end) shows whether they do.
    pub fn stream_redactor(&self) -> impl FnMut(Bytes, bool) -> Bytes + '_ {
        let mut held: Vec<u8> = Vec::new();
        move |chunk: Bytes, end: bool| {
            let mut joined = if held.is_empty() {
                chunk
            } else {
                let mut all = std::mem::take(&mut held);
                all.extend_from_slice(&chunk);
                Bytes::from(all)
            };
            for (secret, label) in self.secrets() {
                if let Some(clean) = secret.redact(&joined, label) {
                    joined = clean;
                }
            }
            if end {
                return joined;
            }
            let keep = self
                .secrets()
                .map(|(secret, _)| secret.partial_at_end(&joined))
                .max()
                .unwrap_or(0);
            if keep > 0 {
                held = joined[joined.len() - keep..].to_vec();
                joined.truncate(joined.len() - keep);
            }
            joined
        }
    }

    /// The reply with every key of the upstream and every extra header's value that it
    /// echoes replaced by a label.
    pub fn redact(&self, reply: Reply) -> Reply {
        let mut reply = self.lanes.redact(reply);
        for (secret, label) in self.secrets.iter() {
            if let Some(clean) = secret.redact(&reply.body, label) {
                reply.body = clean;
            }
        }
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_split_across_chunks_of_a_stream_is_redacted() {
        let key = ApiKey::new("sk-or-v1-streamed-secret-0042".into()).unwrap();
        let upstream =
            Upstream::new(UpstreamSpec::new("http://127.0.0.1:1/v1", vec![key]), 1).unwrap();
        let text = b"data: {\"echo\":\"sk-or-v1-streamed-secret-0042\"}\n\n";
        for split in 1..text.len() {
            let mut redact = upstream.stream_redactor();
            let mut out = Vec::new();
            out.extend_from_slice(&redact(Bytes::copy_from_slice(&text[..split]), false));
            out.extend_from_slice(&redact(Bytes::copy_from_slice(&text[split..]), false));
            out.extend_from_slice(&redact(Bytes::new(), true));
            let out = String::from_utf8(out).unwrap();
            assert!(!out.contains("streamed-secret"), "{split}: {out}");
            assert!(out.contains("key#1"), "{split}: {out}");
        }
        // Nothing that could begin a key is held: an event's end goes on at once.
        let mut redact = upstream.stream_redactor();
        assert_eq!(
            &redact(Bytes::from_static(b"data: x\n\n"), false)[..],
            b"data: x\n\n"
        );
    }
}
