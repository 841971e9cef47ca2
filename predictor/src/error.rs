//! The predictor's one error type and its one mapping to gRPC status codes.

use tonic::Status;

/// Everything that can go wrong in the predictor.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request is malformed or names what the model does not know.
    #[error("{0}")]
    InvalidArgument(String),
    /// A model file does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A model file is not a usable Headroom model.
    #[error("{0}")]
    BadModel(String),
    /// No model is loaded yet.
    #[error("no model loaded: {0}")]
    NoModel(String),
    /// ONNX Runtime failed.
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
    /// The gRPC server failed.
    #[error(transparent)]
    Serve(#[from] headroom_serving::grpc::ServeError),
}

/// Result with the predictor's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<headroom_model::Error> for Error {
    fn from(e: headroom_model::Error) -> Self {
        Error::InvalidArgument(e.to_string())
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidArgument(m) => Status::invalid_argument(m),
            Error::NotFound(m) => Status::not_found(m),
            Error::BadModel(m) => Status::failed_precondition(m),
            e @ Error::NoModel(_) => Status::unavailable(e.to_string()),
            e => {
                tracing::warn!(error = %e, "request failed");
                Status::internal(e.to_string())
            }
        }
    }
}
