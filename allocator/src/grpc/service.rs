//! `headroom.v1.Allocator` over the domain: each call converts its request,
//! asks the [`Allocator`], and converts the answer or the error.

use headroom_proto::v1::{self, allocator_server};
use tonic::{Code, Request, Response, Status};

use super::{backtest, convert};
use crate::{
    allocate::Allocator,
    error::{Error, UpstreamKind, upstream_kind},
};

/// The allocator's gRPC service.
#[derive(Debug, Clone)]
pub struct AllocatorApi {
    allocator: Allocator,
}

impl AllocatorApi {
    /// The service answering with `allocator`.
    pub fn new(allocator: Allocator) -> Self {
        Self { allocator }
    }
}

/// The one mapping of the allocator's errors to gRPC status codes.
impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        let code = match &e {
            Error::Param { .. }
            | Error::BadChoice { .. }
            | Error::UnknownStrategy { .. }
            | Error::StrategyNotHere { .. }
            | Error::NoServices
            | Error::EmptyName { .. }
            | Error::PressureResource { .. }
            | Error::TooManyServices { .. }
            | Error::UnknownHorizon { .. }
            | Error::Placement(_)
            | Error::NoSplit
            | Error::NoHeldOutService => Code::InvalidArgument,
            // A named service that is not there, as NOT_FOUND says.
            Error::ServiceNotHeldOut { .. }
            | Error::UnknownTraceService { .. }
            | Error::UnknownService { .. } => Code::NotFound,
            Error::NoHistory { .. }
            | Error::Unanswered(_)
            | Error::NothingHeldOut { .. }
            | Error::NothingToScore { .. }
            | Error::NothingProvisioned
            | Error::NoDurationBeforeSplit
            | Error::NoHistoryBeforeSplit { .. }
            | Error::ModelAfterSplit { .. } => Code::FailedPrecondition,
            Error::Upstream { code, .. } => match upstream_kind(*code) {
                // The upstream's own word: NOT_FOUND stays NOT_FOUND.
                UpstreamKind::CallersMistake => Code::from_i32(*code),
                UpstreamKind::Unavailable => Code::Unavailable,
                UpstreamKind::Other => Code::from_i32(*code),
            },
            Error::Panicked { .. }
            | Error::Url { .. }
            | Error::Connect { .. }
            | Error::Json(_)
            | Error::Yaml(_)
            | Error::Csv(_)
            | Error::Chart { .. }
            | Error::Serve(_) => {
                tracing::warn!(error = %e, "request failed");
                Code::Internal
            }
        };
        Status::new(code, message)
    }
}

#[tonic::async_trait]
impl allocator_server::Allocator for AllocatorApi {
    async fn recommend(
        &self,
        request: Request<v1::RecommendRequest>,
    ) -> Result<Response<v1::RecommendResponse>, Status> {
        let r = request.into_inner();
        let strategy = convert::strategy(&r.strategy)?;
        let params = convert::overrides(r.params)?;
        let done = self
            .allocator
            .recommend(convert::workload(r.workload), strategy, &params)
            .await?;
        Ok(Response::new(v1::RecommendResponse {
            allocations: done.iter().map(convert::allocation).collect(),
        }))
    }

    async fn plan(
        &self,
        request: Request<v1::PlanRequest>,
    ) -> Result<Response<v1::PlanResponse>, Status> {
        let r = request.into_inner();
        let params = convert::overrides(r.params)?;
        let done = self
            .allocator
            .plan(convert::workload(r.workload), &params)
            .await?;
        Ok(Response::new(convert::plan_response(&done)))
    }

    async fn place(
        &self,
        request: Request<v1::PlaceRequest>,
    ) -> Result<Response<v1::PlaceResponse>, Status> {
        let ask = convert::place_ask(request.into_inner())?;
        let done = self.allocator.place(ask).await?;
        Ok(Response::new(convert::place_response(&done)))
    }

    async fn backtest(
        &self,
        request: Request<v1::BacktestRequest>,
    ) -> Result<Response<v1::BacktestResponse>, Status> {
        let ask = backtest::ask(request.into_inner())?;
        let done = self.allocator.backtest(ask).await?;
        Ok(Response::new(backtest::response(&done)))
    }
}
