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
    /// The database is unreachable or not ready.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A database statement failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations could not be applied.
    #[error("while migrating the schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
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
        match self {
            Error::Unavailable(_) => true,
            Error::Database(e) => is_connection_error(e),
            _ => false,
        }
    }
}

/// Whether a sqlx error means the server could not be reached or went away.
pub fn is_connection_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => true,
        // 57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now,
        // class 08: connection exceptions.
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::NotFound(m) => Status::not_found(m),
            Error::InvalidArgument(m) => Status::invalid_argument(m),
            e if e.is_connection() => Status::unavailable(e.to_string()),
            // A request before the first migration ran (startup).
            Error::Database(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P01") => {
                Status::unavailable("the collector's schema is not ready yet; retry shortly")
            }
            e => {
                tracing::warn!(error = %e, "request failed");
                Status::internal(e.to_string())
            }
        }
    }
}
