pub mod mock_logzio;
pub mod pg;
pub mod workspace;
