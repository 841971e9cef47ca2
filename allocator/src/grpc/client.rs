//! A client of a running allocator that speaks domain types, for the CLI:
//! requests and answers converted here, refusals as [`crate::Error::Upstream`].

use headroom_proto::v1::{self, allocator_client::AllocatorClient};
use headroom_serving::tls::ClientTls;
use tonic::transport::Channel;

use super::{backtest, convert, sources::upstream};
use crate::{
    allocate::{PlanReport, Recommendation, Workload},
    backtest::{BacktestAsk, BacktestReport},
    error::{Error, Result},
    params::Overrides,
    place::{PlaceAsk, Placed},
    strategy::Strategy,
};

const WHAT: &str = "the allocator";

/// A connected client.
#[derive(Debug, Clone)]
pub struct Client {
    client: AllocatorClient<Channel>,
}

impl Client {
    /// Connects to the allocator at `url` (TLS per `tls` for `https://`).
    pub async fn connect(url: &str, tls: &ClientTls) -> Result<Self> {
        let channel = tls
            .endpoint(url)
            .map_err(|source| Error::Url {
                what: "allocator",
                url: url.to_string(),
                source,
            })?
            .connect()
            .await
            .map_err(|e| Error::Connect {
                url: url.to_string(),
                message: headroom_options::one_line(&e),
            })?;
        Ok(Self {
            client: AllocatorClient::new(channel),
        })
    }

    /// `Recommend`.
    pub async fn recommend(
        &self,
        workload: &Workload,
        strategy: Strategy,
        params: &Overrides,
    ) -> Result<Vec<Recommendation>> {
        let answer = self
            .client
            .clone()
            .recommend(v1::RecommendRequest {
                workload: Some(convert::workload_message(workload)),
                strategy: strategy.name().to_string(),
                params: Some(convert::params(params)),
            })
            .await
            .map_err(upstream(WHAT))?
            .into_inner();
        answer
            .allocations
            .into_iter()
            .map(convert::recommendation)
            .collect()
    }

    /// `Plan`.
    pub async fn plan(&self, workload: &Workload, params: &Overrides) -> Result<PlanReport> {
        let answer = self
            .client
            .clone()
            .plan(v1::PlanRequest {
                workload: Some(convert::workload_message(workload)),
                params: Some(convert::params(params)),
            })
            .await
            .map_err(upstream(WHAT))?
            .into_inner();
        convert::plan_report(answer)
    }

    /// `Place`.
    pub async fn place(&self, ask: &PlaceAsk) -> Result<Placed> {
        let answer = self
            .client
            .clone()
            .place(convert::place_request(ask))
            .await
            .map_err(upstream(WHAT))?
            .into_inner();
        Ok(convert::placed(answer))
    }

    /// `Backtest`.
    pub async fn backtest(&self, ask: &BacktestAsk) -> Result<BacktestReport> {
        let answer = self
            .client
            .clone()
            .backtest(backtest::request(ask))
            .await
            .map_err(upstream(WHAT))?
            .into_inner();
        backtest::report(answer)
    }
}
