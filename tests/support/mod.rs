pub mod mock_logzio;
pub mod workspace;
