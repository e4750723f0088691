//! Reading a whole prefix a page at a time: one `Range` request of [`PAGE`] keys after another,
//! each starting just past the last key read, so neither etcd nor the reader ever holds the whole
//! prefix in one response (etcd's default `--max-request-bytes` is 1.5 MiB, and a large answer
//! blocks the member while it is built). Used by the reports that read prefixes of unknown size:
//! `status`, the instance records, halts, stored limits and duplicates.

use etcd_client::{Client, GetOptions, KeyValue};

/// Keys per request.
pub const PAGE: i64 = 500;

/// Every key under `prefix`, in key order, read [`PAGE`] keys at a time.
pub async fn get_prefix(
    client: &mut Client,
    prefix: &str,
) -> Result<Vec<KeyValue>, etcd_client::Error> {
    get_prefix_in_pages(client, prefix.as_bytes(), PAGE).await
}

/// [`get_prefix`] with `page` keys per request.
pub async fn get_prefix_in_pages(
    client: &mut Client,
    prefix: &[u8],
    page: i64,
) -> Result<Vec<KeyValue>, etcd_client::Error> {
    let end = range_end(prefix);
    let mut from = prefix.to_vec();
    let mut kvs = Vec::new();
    loop {
        let options = GetOptions::new().with_range(end.clone()).with_limit(page);
        let mut resp = client.get(from.clone(), Some(options)).await?;
        let more = resp.more();
        let got = resp.take_kvs();
        let Some(last) = got.last() else {
            return Ok(kvs);
        };
        // The next page starts at the smallest key after the last one read.
        from = last.key().to_vec();
        from.push(0);
        kvs.extend(got);
        if !more {
            return Ok(kvs);
        }
    }
}

/// The end of the range that holds exactly the keys starting with `prefix`: the prefix with its
/// last byte below 0xff incremented and what follows dropped; `\0` (to the end of the keyspace)
/// when every byte is 0xff or the prefix is empty, as etcd defines it.
pub fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_end_is_the_prefix_with_its_last_byte_below_0xff_incremented() {
        assert_eq!(range_end(b"/sidekick/slots/"), b"/sidekick/slots0".to_vec());
        assert_eq!(range_end(b"a\xff"), b"b".to_vec());
        assert_eq!(range_end(b"a\xff\xff"), b"b".to_vec());
        assert_eq!(range_end(b"\xff\xff"), vec![0]);
        assert_eq!(range_end(b""), vec![0]);
    }
}
