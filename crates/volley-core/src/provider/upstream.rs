//! An upstream: one OpenAI-compatible provider a job can be sent to — its base URL,
//! keys, extra headers, and lanes laid out the way it limits (SPEC §5, §6). One engine
//! serves several: a job names its upstream by index.

use std::sync::Arc;

use crate::limits::lanes::{LaneLayout, LanePool};
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
