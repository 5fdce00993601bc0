pub mod ci;
pub mod host;
pub mod mock_logzio;
pub mod pg;
pub mod tools;
pub mod workspace;
