//! `headroom-allocator`: how much each service should get. It answers
//! `headroom.v1.Allocator` (`Recommend`, `Plan`, `Place`, `Backtest`) from
//! the collector's history and the predictor's quantile curves; see
//! [`strategy`] for the strategies, [`place`] for placement and [`grpc`]
//! for the only module that speaks protobuf.

pub mod allocate;
pub mod backtest;
pub mod calibrate;
pub mod error;
pub mod grpc;
pub mod histogram;
pub mod history;
pub mod params;
pub mod place;
pub mod pressure;
pub mod quantiles;
pub mod render;
pub mod replay;
pub mod report;
pub mod segments;
pub mod snapshot;
pub mod strategy;

pub use allocate::{Allocator, ServiceOptions};
pub use error::{Error, Result};
pub use grpc::{AllocatorConfig, SERVICE_NAME, run};

/// Resources a request covers when it names none: cpu and memory.
pub fn default_resources() -> Vec<String> {
    [
        headroom_proto::resource::CPU,
        headroom_proto::resource::MEMORY,
    ]
    .map(String::from)
    .to_vec()
}
