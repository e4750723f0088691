//! Duplicate instances: two hosts that both run the same instance (`web@1.service` twice) would
//! overwrite each other's registration. The registry writes a key only when it is absent or on
//! its own lease; a key held by another live lease is left alone, and the instance that finds it
//! records itself under `/sidekick/duplicates/<key>` on its own lease, for `sidekick status`,
//! until it can register (the other instance went away) or stops.

use etcd_client::Client;
use serde::{Deserialize, Serialize};

/// Prefix of every duplicate record.
pub const DUPLICATE_PREFIX: &str = "/sidekick/duplicates/";

/// The record of an instance kept out of `key` by another holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DuplicateRecord {
    /// The registration key held by the other instance.
    pub key: String,
    /// The host of the instance kept out (the one writing this record).
    pub host: String,
    /// The host named in the value of the key, i.e. the instance holding it.
    pub held_by: String,
    /// When it was first found, RFC 3339.
    pub since: String,
}

/// The record key for registration key `key`.
pub fn record_key(key: &str) -> String {
    format!("{DUPLICATE_PREFIX}{}", key.trim_start_matches('/'))
}

/// The host a registration value names: `host` of a JSON value, the host of a URL value, else
/// the value itself (shortened).
pub fn host_of(value: &str) -> String {
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(value) {
        if let Some(host) = json.get("host").and_then(|h| h.as_str()) {
            return host.to_string();
        }
        if let Some(url) = json.get("URL").and_then(|h| h.as_str()) {
            return host_of(url);
        }
    }
    if let Ok(url) = url::Url::parse(value)
        && let Some(host) = url.host_str()
    {
        return host.to_string();
    }
    value.chars().take(64).collect()
}

/// Every duplicate record, sorted by key.
pub async fn list(client: &mut Client) -> Result<Vec<DuplicateRecord>, etcd_client::Error> {
    let kvs = super::paged::get_prefix(client, DUPLICATE_PREFIX).await?;
    let mut records: Vec<DuplicateRecord> = kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
        .collect();
    records.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_is_read_from_every_layouts_value() {
        assert_eq!(host_of(r#"{"host":"10.0.0.5","port":8080}"#), "10.0.0.5");
        assert_eq!(host_of("http://10.0.0.6:8080"), "10.0.0.6");
        assert_eq!(host_of(r#"{"URL":"http://10.0.0.7:80"}"#), "10.0.0.7");
        assert_eq!(host_of("plain"), "plain");
    }

    #[test]
    fn record_keys_sit_under_the_prefix_for_any_layout() {
        assert_eq!(
            record_key("/services/web/web-1"),
            "/sidekick/duplicates/services/web/web-1"
        );
        assert_eq!(
            record_key("traefik/http/services/web/loadbalancer/servers/web-1/url"),
            "/sidekick/duplicates/traefik/http/services/web/loadbalancer/servers/web-1/url"
        );
    }
}
