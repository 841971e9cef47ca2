//! The collector's one error type and its one mapping to gRPC status codes.

use tonic::Status;

/// Everything that can go wrong in the collector.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A name or id in a request does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A request is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The store failed or refused.
    #[error(transparent)]
    Store(#[from] headroom_store::Error),
    /// Kafka client setup or admin failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The gRPC server failed.
    #[error(transparent)]
    Serve(#[from] headroom_serving::grpc::ServeError),
}

/// Result with the collector's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether the error means the database could not be reached (as opposed
    /// to a statement the database refused).
    pub fn is_connection(&self) -> bool {
        matches!(self, Error::Store(e) if e.is_connection())
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        use headroom_store::Error as StoreError;
        match e {
            Error::NotFound(m) | Error::Store(StoreError::NotFound(m)) => Status::not_found(m),
            Error::InvalidArgument(m) | Error::Store(StoreError::InvalidArgument(m)) => {
                Status::invalid_argument(m)
            }
            e if e.is_connection() => Status::unavailable(e.to_string()),
            // A request before the first migration ran (startup).
            Error::Store(s) if s.is_schema_missing() => {
                Status::unavailable("the collector's schema is not ready yet; retry shortly")
            }
            e => {
                tracing::warn!(error = %e, "request failed");
                Status::internal(e.to_string())
            }
        }
    }
}
