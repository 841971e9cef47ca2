//! What the report page shows as current usage: the collector's
//! `UsageStats` (p50, p95, max) per service and resource over a window.

use headroom_proto::v1::{self, collector_client::CollectorClient};
use headroom_serving::tls::ClientTls;

use super::{lazy, sources::upstream};
use crate::{error::Result, report::Usage};

/// Usage of `services` × `resources` (every resource when empty) over the
/// samples since `since` (unix seconds), from the collector at `url`.
///
/// Errors: a malformed URL; the collector unreachable or refusing (unknown
/// services are its NOT_FOUND, naming them).
pub async fn usage_stats(
    url: &str,
    tls: &ClientTls,
    services: &[String],
    resources: &[String],
    since: f64,
) -> Result<Vec<Usage>> {
    let mut client = CollectorClient::new(lazy("collector", url, tls)?);
    let answer = client
        .usage_stats(v1::UsageStatsRequest {
            filter: Some(v1::UsageFilter {
                services: services.to_vec(),
                resources: resources.to_vec(),
                start: Some(headroom_proto::time::from_unix_ms((since * 1e3) as i64)),
                ..Default::default()
            }),
        })
        .await
        .map_err(upstream("the collector"))?
        .into_inner();
    Ok(answer
        .stats
        .into_iter()
        .map(|s| Usage {
            service: s.service,
            resource: s.resource,
            samples: s.count,
            p50: s.p50,
            p95: s.p95,
            max: s.max,
        })
        .collect())
}
